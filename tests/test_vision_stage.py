"""Stage 0 (vision): dense kind/colour targets from the scene graph, the encoder learning them, a
killed run resuming exactly, and the next stage starting from its checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nanovla.data.scenes import COLOR_NAMES, KINDS, Scene, SceneObject
from nanovla.training.vision_stage import dense_targets
from tiny_models import tiny_model_config
from train_helpers import killed_at


def _obj(kind, color, bbox):
    x0, y0, x1, y1 = bbox
    return SceneObject(kind=kind, color=color, x=0.5 * (x0 + x1), y=y1, size=y1 - y0, bbox=list(bbox))


def test_dense_targets_label_the_cells_under_each_box():
    # 640x480 frame on a 6x8 grid: cells are 80x80, centres at 40, 120, ...
    scene = Scene(objects=[_obj("cube", "red", (90, 90, 250, 170))])
    kind, color = dense_targets(scene, 6, 8)
    expected = np.zeros((6, 8), bool)
    expected[1, 1:3] = True  # centres (120, 120) and (200, 120) lie inside the box
    assert ((kind > 0) == expected).all()
    assert set(kind[expected]) == {KINDS.index("cube") + 1}
    assert set(color[expected]) == {COLOR_NAMES.index("red") + 1}
    assert (color[~expected] == 0).all()


def test_the_nearer_object_owns_a_shared_cell_and_a_small_object_keeps_one():
    back = _obj("ball", "blue", (0, 0, 320, 200))  # base at y=200: further away
    front = _obj("cone", "green", (100, 60, 200, 260))  # base at y=260: nearer, overlaps back
    tiny = _obj("ring", "white", (500, 400, 510, 410))  # smaller than any cell, no centre inside
    kind, color = dense_targets(Scene(objects=[front, tiny, back]), 6, 8)
    assert kind[1, 1] == KINDS.index("cone") + 1  # centre (120, 120): inside both boxes
    assert kind[0, 3] == KINDS.index("ball") + 1  # centre (280, 40): the ball alone
    assert kind[5, 6] == KINDS.index("ring") + 1 and color[5, 6] == COLOR_NAMES.index("white") + 1
    assert (kind > 0).sum() == (color > 0).sum()


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    from data_helpers import generate_scene_dir

    return generate_scene_dir(str(tmp_path_factory.mktemp("scenes")), count=8, seed=5)


def _config(scene_dir, out, **kw):
    from nanovla.training.train import TrainConfig

    base = dict(stage="vision", data=scene_dir, out=out, steps=60, batch_size=8, vision_lr=3e-3, warmup_steps=5,
                eval_scenes=8, heldout_scenes=0, save_every=0, log_every=10, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_vision_stage_learns_the_cells_and_the_text_stage_starts_from_it(tmp_path, scene_dir):
    from nanovla.model.checkpoint import load_checkpoint, read_metrics
    from nanovla.training.train import train

    torch.manual_seed(0)
    metrics = train(_config(scene_dir, str(tmp_path / "vision")), tiny_model_config(), log=lambda m: None)
    # 8 scenes seen ~60 times: the heads read colour and kind off the cells they were trained on
    assert metrics["train_cells"]["color_acc"] > 0.8, metrics["train_cells"]
    assert metrics["train_cells"]["kind_acc"] > 0.5, metrics["train_cells"]
    assert set(metrics["eval_cells"]) == {"kind_acc", "color_acc", "none_acc", "scenes"}
    assert read_metrics(str(tmp_path / "vision"))["stage"] == "vision"

    vision, _, _ = load_checkpoint(str(tmp_path / "vision"))
    train(_config(scene_dir, str(tmp_path / "text"), stage="text", init=str(tmp_path / "vision"), steps=2, lr=1e-3),
          log=lambda m: None)
    text, _, _ = load_checkpoint(str(tmp_path / "text"))
    # the text stage trains the decoder only: the encoder (and its BatchNorm statistics) is kept
    for (name, a), (_, b) in zip(vision.vision.state_dict().items(), text.vision.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(vision.decoder.parameters(), text.decoder.parameters()))


def test_killed_vision_stage_resumes_exactly(tmp_path, scene_dir):
    import nanovla.training.train as train_module
    from nanovla.model.checkpoint import load_checkpoint

    torch.manual_seed(0)
    train_module.train(_config(scene_dir, str(tmp_path / "straight"), steps=5, save_every=2), tiny_model_config(),
                       log=lambda m: None)
    import nanovla.training.vision_stage as vision_module

    torch.manual_seed(0)
    cfg = _config(scene_dir, str(tmp_path / "killed"), steps=5, save_every=2)
    with killed_at(vision_module, 3), pytest.raises(KeyboardInterrupt):
        train_module.train(cfg, tiny_model_config(), log=lambda m: None)
    assert (tmp_path / "killed.resume" / "heads.safetensors").is_file()
    torch.manual_seed(0)
    train_module.train(cfg, tiny_model_config(), log=lambda m: None)
    a, _, _ = load_checkpoint(str(tmp_path / "straight"))
    b, _, _ = load_checkpoint(str(tmp_path / "killed"))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5, msg=name)
    assert not (tmp_path / "killed.resume").exists()


def test_vision_stage_refuses_data_sets_without_boxes(tmp_path):
    from nanovla.training.train import TrainConfig, train

    cfg = TrainConfig(stage="vision", sources=[{"path": str(tmp_path / "llava.json")}], out=str(tmp_path / "o"))
    (tmp_path / "llava.json").write_text("[]")
    with pytest.raises(ValueError):
        train(cfg, tiny_model_config(), log=lambda m: None)
