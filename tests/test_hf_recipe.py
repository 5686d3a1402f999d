"""The GPU recipe, smoke-run end to end on CPU: tiny random SigLIP-B/16-shaped and SmolLM2-shaped
checkpoints and tiny LLaVA-Pretrain / LLaVA-Instruct / VQAv2 / GQA data sets written at the paths
the recipe names, 2 steps per stage, then eval and generate on the result."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from data_helpers import make_gqa, make_llava, make_vqa
from hf_helpers import save_tiny_decoder, save_tiny_vision

pytest.importorskip("transformers")

RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "recipes",
                      "gpu_siglip_smollm2.toml")


def test_gpu_recipe_smoke_runs_on_cpu(tmp_path, monkeypatch, capsys):
    from nanovla.cli import main
    from nanovla.training.recipe import load_recipe, run_recipe

    models, data = tmp_path / "models", tmp_path / "data"
    save_tiny_vision(str(models / "siglip-base-patch16-224"), "siglip", image_size=224, patch_size=16)
    save_tiny_decoder(str(models / "SmolLM2-135M"), "smollm2")
    pretrain = make_llava(str(data / "LLaVA-Pretrain"))
    os.replace(pretrain, str(data / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json"))
    mix = make_llava(str(data / "mix"))
    shutil.move(str(data / "mix" / "images"), str(data / "mix_images"))
    rows = json.load(open(mix))
    for row in rows:  # mix665k names images relative to DATA
        if "image" in row:
            row["image"] = "mix_images/" + row["image"]
    (data / "llava_v1_5_mix665k.json").write_text(json.dumps(rows))
    make_vqa(str(data / "vqa_tmp"))
    (data / "vqav2").mkdir()
    for name in os.listdir(data / "vqa_tmp"):
        if name.endswith(".json"):
            os.replace(str(data / "vqa_tmp" / name), str(data / "vqav2" / name.replace("val2014", "train2014")))
    (data / "coco").mkdir()
    os.replace(str(data / "vqa_tmp" / "val2014"), str(data / "coco" / "train2014"))
    for name in os.listdir(data / "coco" / "train2014"):
        os.replace(str(data / "coco" / "train2014" / name), str(data / "coco" / "train2014" / name.replace("val2014", "train2014")))
    for name in ("questions", "annotations"):  # data_subtype inside the files follows the names
        path = next(p for p in (data / "vqav2").iterdir() if name in p.name)
        path.write_text(path.read_text().replace("val2014", "train2014"))
    gqa = make_gqa(str(data / "gqa"))
    os.replace(gqa, str(data / "gqa" / "train_balanced_questions.json"))

    monkeypatch.setenv("MODELS", str(models))
    monkeypatch.setenv("DATA", str(data))
    monkeypatch.chdir(tmp_path)
    _, stages, meta = load_recipe(RECIPE)
    assert [name for name, _ in stages] == ["align", "sft"] and meta["init"]["image_tokens"] == 49
    run_recipe(RECIPE, overrides={"steps": 2, "batch_size": 2, "global_batch": 4, "device": "cpu",
                                  "save_every": 0, "log_every": 1, "data_workers": 2,
                                  "init": {"max_seq_len": 512}})
    final = tmp_path / "runs" / "gpu_siglip_smollm2" / "model"
    config = json.loads((final / "config.json").read_text())
    assert config["model"]["vision"]["kind"] == "siglip" and config["model"]["projector"]["grid"] == [7, 7]
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["stage"] == "sft" and metrics["train_config"]["grad_accum"] == 2
    assert metrics["data"]["skipped_images"] > 0  # the fixtures hold a corrupt and a missing image per source: counted, never fatal
    capsys.readouterr()
    out = str(tmp_path / "metrics.json")
    assert main(["eval", "--data", str(data / "vqav2" / "v2_OpenEnded_mscoco_train2014_questions.json"),
                 "--images", str(data / "coco" / "train2014"), "--model", str(final), "--max-new-tokens", "3",
                 "--out", out]) == 0
    assert json.loads(open(out).read())["questions"] > 0
    assert main(["generate", "--model", str(final), "--raw", "the red cube", "--max-new-tokens", "4", "--json"]) == 0
