"""`nanovla init` and `nanovla generate --raw`: greedy tokens equal transformers' generate()."""

from __future__ import annotations

import json

import pytest

from hf_helpers import save_tiny_decoder, save_tiny_vision

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("family,encoder", [("smollm2", "siglip"), ("qwen2", "clip"), ("llama", "yolov9t")])
def test_init_then_generate_raw_equals_transformers(tmp_path, capsys, family, encoder):
    from nanovla.cli import main

    dec = save_tiny_decoder(str(tmp_path / "dec"), family)
    enc = encoder if encoder == "yolov9t" else save_tiny_vision(str(tmp_path / "enc"), encoder)
    out = str(tmp_path / "ckpt")
    args = ["init", "--encoder", enc, "--decoder", dec, "--out", out, "--image-tokens", "4"]
    if encoder == "yolov9t":
        args += ["--image-size", "64x96", "--image-tokens", "6"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["generate", "--model", out, "--raw", "the red cube is", "--max-new-tokens", "12", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    from tokenizers import Tokenizer

    prompt = Tokenizer.from_file(f"{dec}/tokenizer.json").encode("the red cube is").ids
    hf = transformers.AutoModelForCausalLM.from_pretrained(dec, local_files_only=True).eval()
    ids = torch.tensor([prompt])
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)[0, len(prompt):]
    expected = [t for t in expected.tolist()]
    if 0 in expected:  # the tiny configs' eos is id 0: transformers stops there, so does nanovla
        expected = expected[: expected.index(0)]
    assert got["token_ids"] == expected
    assert isinstance(got["text"], str)


def test_export_hf_command(tmp_path):
    from nanovla.cli import main

    dec = save_tiny_decoder(str(tmp_path / "dec"), "llama")
    out = str(tmp_path / "ckpt")
    assert main(["init", "--encoder", "yolov9t", "--decoder", dec, "--out", out, "--image-size", "64x96",
                 "--image-tokens", "6"]) == 0
    assert main(["export-hf", "--model", out, "--out", str(tmp_path / "hf")]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert model.config.vocab_size == json.load(open(f"{out}/config.json"))["model"]["decoder"]["vocab_size"]


def test_init_errors_are_one_line(tmp_path, capsys):
    from nanovla.cli import main

    assert main(["init", "--encoder", "yolov9t", "--decoder", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_init_from_a_users_trained_yolo_checkpoint(tmp_path):
    """A local ultralytics .pt (a team's own detector): its neck features feed the projector."""
    from ultralytics.nn.tasks import DetectionModel

    from nanovla.model.checkpoint import load_checkpoint
    from nanovla.model.pretrained import init_checkpoint

    torch.manual_seed(0)
    detector = DetectionModel("yolov9t.yaml", ch=3, nc=3, verbose=False)
    with torch.no_grad():
        detector.model[0].conv.weight.mul_(1.5)  # "trained": differs from a fresh build
    pt = str(tmp_path / "my_detector.pt")
    torch.save({"model": detector, "train_args": {}}, pt)
    dec = save_tiny_decoder(str(tmp_path / "dec"), "smollm2")
    info = init_checkpoint(pt, dec, str(tmp_path / "ckpt"), image_tokens=6, image_size=(64, 96), log=lambda m: None)
    assert info["grid"] == [2, 3]
    model, _, config = load_checkpoint(str(tmp_path / "ckpt"))
    assert config["model"]["vision"]["arch"] == pt
    torch.testing.assert_close(model.vision.layers[0].conv.weight, detector.model[0].conv.weight)


@pytest.mark.parametrize("encoder", ["siglip", "clip"])
def test_pretrained_parts_export_to_a_bundle_that_matches_torch(tmp_path, encoder):
    """init -> ONNX bundle (the export module) -> onnxruntime gives torch's greedy tokens."""
    pytest.importorskip("onnxruntime")
    exporter = pytest.importorskip("nanovla.export.exporter")
    from nanovla.data.scenes import generate
    from nanovla.export.formats import ExportOptions
    from nanovla.model.pretrained import init_checkpoint
    from nanovla.runtime import load_runtime

    enc = save_tiny_vision(str(tmp_path / "enc"), encoder)
    dec = save_tiny_decoder(str(tmp_path / "dec"), "qwen2")
    init_checkpoint(enc, dec, str(tmp_path / "ckpt"), image_tokens=4, image_size=(48, 64), log=lambda m: None)
    exporter.export_bundle(str(tmp_path / "ckpt"), "onnx", str(tmp_path / "bundle"),
                           ExportOptions(parity_scenes=1, allow_drift=True), log=lambda m: None)
    image = generate("eval", 0, 0)[0]
    ort = load_runtime(str(tmp_path / "bundle"), backend="onnxruntime").describe(image, max_new_tokens=6)
    ref = load_runtime(str(tmp_path / "ckpt")).describe(image, max_new_tokens=6)
    assert ort.token_ids == ref.token_ids
