import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_models import build_tiny_model
from nanovla.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nanovla.cli import main


def test_checkpoint_round_trip(tmp_path):
    model, tok = build_tiny_model(seed=1)
    path = tmp_path / "ckpt"
    save_checkpoint(str(path), model, tok, {"eval": {"exact_match": 0.5}})
    assert sorted(os.listdir(path)) == ["config.json", "metrics.json", "model.safetensors", "tokenizer.json"]
    again, tok2, config = load_checkpoint(str(path))
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert tok2.encode("a red cube") == tok.encode("a red cube")
    x = torch.rand(1, 3, 64, 96)
    assert torch.equal(model.encode_image(x), again.encode_image(x))
    assert not any(name.startswith(".tmp") for name in os.listdir(tmp_path))  # atomic: no leftovers


def test_checkpoint_rejects_mismatched_weights(tmp_path, tiny_checkpoint):
    path = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, path)
    weights = load_file(str(path / "model.safetensors"))
    weights.pop("projector.pos")
    weights["decoder.norm.weight"] = torch.ones(3)
    weights["extra.thing"] = torch.zeros(1)
    save_file(weights, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(path))
    msg = str(e.value)
    assert "missing projector.pos" in msg and "unexpected extra.thing" in msg and "decoder.norm.weight" in msg


def test_checkpoint_for_another_config_is_rejected(tmp_path, tiny_checkpoint):
    path = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, path)
    config = json.loads((path / "config.json").read_text())
    config["model"]["decoder"]["n_layer"] = 3
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing decoder.layers.2"):
        load_checkpoint(str(path))
    (path / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(str(tmp_path))


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    assert main(["data", "generate", "--out", str(out), "--count", "3", "--seed", "5", "--split", "heldout"]) == 0
    return out


def test_data_generate_contract(scenes_dir):
    rows = [json.loads(line) for line in (scenes_dir / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert os.path.isfile(scenes_dir / row["image"]) and row["image"].startswith("images/")
        assert set(row) >= {"image", "objects", "caption", "qa"}
        for o in row["objects"]:
            assert set(o) == {"kind", "color", "bbox"} and len(o["bbox"]) == 4
        for q in row["qa"]:
            assert set(q) == {"question", "answer", "type"}
    from nanovla.data.scenes import HELDOUT_PAIRS
    assert all({(o["color"], o["kind"]) for o in r["objects"]} & HELDOUT_PAIRS for r in rows)


def test_describe_and_ask_json(scenes_dir, tiny_checkpoint, capsys):
    image = str(scenes_dir / "images" / "000000.png")
    assert main(["describe", image, image, "--model", tiny_checkpoint, "--json", "--max-new-tokens", "5"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and set(lines[0]) == {"image", "description", "latency_ms"} and lines[0]["image"] == image
    assert main(["ask", image, "how many cubes are there?", "--model", tiny_checkpoint, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"answer", "latency_ms"} and isinstance(out["answer"], str)


def test_ask_batch_reports_bad_lines_and_continues(scenes_dir, tiny_checkpoint, capsys, tmp_path):
    qfile = scenes_dir / "questions.jsonl"
    qfile.write_text("\n".join([
        json.dumps({"image": "images/000000.png", "question": "is there a red cube?"}),
        "not json",
        json.dumps({"image": "images/missing.png", "question": "what?"}),
        json.dumps({"image": "images/000001.png", "question": ""}),
        json.dumps({"image": "images/000001.png", "question": "how many objects are there?", "id": 7}),
    ]) + "\n")
    code = main(["ask", "--questions", str(qfile), "--model", tiny_checkpoint, "--max-new-tokens", "4"])
    captured = capsys.readouterr()
    out = [json.loads(l) for l in captured.out.splitlines()]
    assert code == 2
    assert [o["question"] for o in out] == ["is there a red cube?", "how many objects are there?"]
    assert out[1]["id"] == 7 and all("answer" in o for o in out)
    errors = captured.err.splitlines()
    assert len(errors) == 3 and "questions.jsonl:2" in errors[0] and "no such file" in errors[1]
    assert "empty question" in errors[2]


def test_eval_prints_metrics(scenes_dir, tiny_checkpoint, capsys):
    assert main(["eval", "--data", str(scenes_dir), "--model", tiny_checkpoint]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 3 and 0 <= metrics["exact_match"] <= 1
    assert set(metrics["caption"]) == {"precision", "recall", "f1", "place_accuracy", "places_compared"}


@pytest.mark.parametrize("argv, message", [
    (["describe", "/nonexistent.png"], "no such file"),
    (["ask", "IMG", "   "], "empty question"),
    (["describe", "IMG", "--model", "/tmp"], "not a nanovla checkpoint"),
    (["eval", "--data", "EMPTY"], "empty: no"),  # names the directory and what it lacks
])
def test_cli_errors_are_one_line(argv, message, tmp_path, tiny_checkpoint, capsys):
    image = tmp_path / "img.png"
    import cv2
    import numpy as np
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "empty").mkdir()
    argv = [{"IMG": str(image), "EMPTY": str(tmp_path / "empty")}.get(a, a) for a in argv]
    if "--model" not in argv:
        argv += ["--model", tiny_checkpoint]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_corrupt_and_non_image_files(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    code = main(["describe", str(tmp_path / "corrupt.jpg"), str(tmp_path / "text.png"), str(tmp_path / "empty.png"),
                 "--model", tiny_checkpoint])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 3
    assert "not a decodable image" in err[0] and "not a decodable image" in err[1] and "empty file" in err[2]


def test_huge_image_refused_before_decoding(tmp_path):
    from nanovla.runtime.preprocess import ImageError, load_image
    import cv2
    import numpy as np
    ok, png = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))
    data = bytearray(png.tobytes())
    data[16:20] = (10000).to_bytes(4, "big")  # claim 10000 x 10000 in the header
    data[20:24] = (10000).to_bytes(4, "big")
    (tmp_path / "huge.png").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="exceeds"):
        load_image(str(tmp_path / "huge.png"))


def test_cli_subprocess_exit_code_without_traceback(tmp_path, tiny_checkpoint):
    proc = subprocess.run([sys.executable, "-m", "nanovla.cli", "describe", str(tmp_path / "nope.png"),
                           "--model", tiny_checkpoint],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "no such file" in proc.stderr


def test_every_shipped_recipe_parses(monkeypatch):
    """A recipe with an unknown key or a bad value fails here, not an hour into a run."""
    import glob

    from nanovla.training.recipe import load_recipe

    monkeypatch.setenv("MODELS", "/nonexistent/models")
    paths = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "training", "recipes", "**", "*.toml"),
                             recursive=True))
    assert len(paths) >= 3 and any("experiments" in p for p in paths)
    for path in paths:
        _, stages, _ = load_recipe(path)
        assert stages, path



def test_recipe_paths_expand_variables_with_defaults(monkeypatch):
    """`${NANOVLA_RUNS:-runs}`: runs/ in the checkout by default, elsewhere (a resumable state that
    outlives the checkout) when the variable is set; a plain unset $VAR is still an error."""
    from nanovla.training.recipe import expand

    monkeypatch.delenv("NANOVLA_RUNS", raising=False)
    assert expand("${NANOVLA_RUNS:-runs}/default/sft", "t") == "runs/default/sft"
    monkeypatch.setenv("NANOVLA_RUNS", "/data/nanovla-runs")
    assert expand(["${NANOVLA_RUNS:-runs}/a", "x"], "t") == ["/data/nanovla-runs/a", "x"]
    monkeypatch.delenv("MODELS", raising=False)
    with pytest.raises(ValueError, match="unset environment variable"):
        expand("${MODELS}/SmolLM2-135M", "stage 'sft'")


def test_recipe_with_bad_question_weights_fails_at_load(tmp_path):
    from nanovla.training.recipe import load_recipe

    for weights, message in (("{nearness = 2.0}", "unknown question type 'nearness'"),
                             ("{near_far = -1.0}", "near_far = -1.0 is not a non-negative number")):
        path = tmp_path / "bad.toml"
        path.write_text(f'[[stage]]\nstage = "sft"\ninit = "x"\nout = "y"\nqa_type_weights = {weights}\n')
        with pytest.raises(ValueError, match=message):
            load_recipe(str(path))
