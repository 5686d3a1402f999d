"""VQAv2 soft accuracy and answer normalisation; `nanovla eval --format` on every format."""

from __future__ import annotations

import json

import pytest

from nanovla.runtime.prompts import DESCRIBE_PROMPT
from data_helpers import make_coco, make_gqa, make_hf, make_llava, make_vqa

pytest.importorskip("pyarrow")


def test_vqa_normalisation_matches_the_official_rules():
    from nanovla.evaluation.formats import normalize_vqa_answer as n

    assert n("Two") == "2" and n("the dog.") == "dog" and n("an apple") == "apple"
    assert n("yes!") == "yes" and n("dont") == "don't" and n("1,000") == "1000"
    assert n("3.5") == "3.5" and n("red and\twhite") == "red and white"


def test_vqa_soft_accuracy():
    from nanovla.evaluation.formats import vqa_soft_accuracy

    answers = ["2"] * 7 + ["two", "many", "3"]  # "two" normalises to "2": 8 annotators agree
    assert vqa_soft_accuracy("two", answers) == 1.0
    assert vqa_soft_accuracy("3", ["3"] * 2 + ["4"] * 8) == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)
    assert vqa_soft_accuracy("many", answers) == pytest.approx((9 * (1 / 3) + 1 * 0) / 10)
    assert vqa_soft_accuracy("cat", answers) == 0.0
    assert vqa_soft_accuracy("Blue.", ["blue"]) == 1.0  # fewer than 3 references: exact after normalising


def test_caption_object_recall_precision(monkeypatch):
    from nanovla.data.formats import Record, Source
    from nanovla.evaluation.formats import evaluate_source

    class FakeRuntime:
        def encode(self, image):
            return None

        def generate(self, context, question, max_new_tokens=64):
            class A:
                text, latency_ms = "a red cube and a blue ball and a green cup", 1.0
            return A()

    import numpy as np

    import nanovla.evaluation.formats as ef

    records = [Record([{"role": "user", "content": DESCRIBE_PROMPT}, {"role": "assistant", "content": "x"}],
                      image=b"png", answers=["x"], objects=["red cube", "blue ball", "white ring"])]
    source = Source("mem", "hf", records + [Record(records[0].turns, image=b"png2", objects=["green cup"])])
    monkeypatch.setattr(ef, "record_image", lambda r: np.zeros((8, 8, 3), np.uint8))
    m = evaluate_source(FakeRuntime(), source)
    # image 1: names red cube, blue ball (in), green cup (not) -> tp 2 of 3 named, 2 of 3 objects
    # image 2: names 3, only green cup is there -> tp 1 of 3, 1 of 1
    assert m["caption_objects"]["precision"] == pytest.approx(3 / 6)
    assert m["caption_objects"]["recall"] == pytest.approx(3 / 4)


@pytest.mark.parametrize("maker,fmt,images", [(make_llava, "llava", "images"), (make_coco, "coco", ""),
                                              (make_vqa, "vqa", ""), (make_gqa, "gqa", "images"),
                                              (make_hf, "hf", "")])
def test_eval_command_on_each_format(tmp_path, tiny_checkpoint, capsys, monkeypatch, maker, fmt, images):
    from nanovla.cli import main

    path = maker(str(tmp_path / fmt))
    monkeypatch.chdir(tmp_path / fmt)  # nothing may land in the working directory unasked
    args = ["eval", "--data", path, "--model", tiny_checkpoint, "--max-new-tokens", "4"]
    if images:
        args += ["--images", str(tmp_path / fmt / images)]
    assert main(args) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert not (tmp_path / fmt / "metrics.json").exists()
    if fmt == "llava":  # --out writes the same JSON
        assert main(args + ["--out", str(tmp_path / "metrics.json")]) == 0
        assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(capsys.readouterr().out)
    assert metrics["format"] == fmt
    assert sum(metrics["skipped"].values()) >= 1  # the missing/corrupt images, counted
    if fmt in ("vqa", "gqa", "hf"):
        assert metrics["questions"] > 0 and 0.0 <= metrics["vqa_accuracy"] <= 1.0
