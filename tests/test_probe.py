"""`nanovla probe`: the probes find a linear signal where there is one and not where there is none."""

import json

import numpy as np

from nanovla.evaluation.probe import format_table, logistic_accuracy, probe, ridge_r2


def test_probes_read_a_linear_signal_and_nothing_from_noise():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 20))
    y_cls = (x[:, 3] - 0.5 * x[:, 7] > 0).astype(int)
    y_reg = 2 * x[:, 1] + 0.1 * rng.standard_normal(600)
    assert logistic_accuracy(x[:400], y_cls[:400], x[400:], y_cls[400:]) > 0.9
    assert ridge_r2(x[:400], y_reg[:400], x[400:], y_reg[400:]) > 0.95
    noise = rng.integers(0, 2, 600)
    assert logistic_accuracy(x[:400], noise[:400], x[400:], noise[400:]) < 0.65
    assert ridge_r2(x[:400], rng.standard_normal(600)[:400], x[400:], rng.standard_normal(200)) < 0.1


def test_probe_of_a_tiny_model_reports_tokens_and_answers(tiny_checkpoint):
    from nanovla.model.checkpoint import load_checkpoint

    model, tok, _ = load_checkpoint(tiny_checkpoint)
    result = probe(model, tok, scenes=12, split="eval", seed=5)
    assert result["train_scenes"] == 8 and result["objects"] > 12
    assert set(result["tokens"]) == {"kind", "colour", "horizontal centre", "base height",
                                     "left/right of a pair", "nearer/farther of a pair"}
    assert all(0.0 <= v <= 1.0 for k, v in result["tokens"].items() if "centre" not in k and "height" not in k)
    assert sum(result["questions"].values()) == 4 * 8  # 8 questions on each of the 4 held-out scenes
    table = format_table(result)
    assert "| nearer/farther of a pair | accuracy" in table and "near_far" in table
    json.dumps(result)


def test_probe_cli_rejects_too_few_scenes(capsys):
    from nanovla.cli import main

    assert main(["probe", "--scenes", "3"]) != 0
    assert "at least 10" in capsys.readouterr().err
