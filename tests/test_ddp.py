"""Multi-process training on CPU: `torchrun` with 2 gloo processes x B rows gives the same losses
as one process with 2B rows (the same global batch), for DDP and for FSDP; a killed run resumes
exactly (weights and data position)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from data_helpers import make_llava, make_vqa
from train_helpers import killed_at

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
TOLERANCE = 2e-5  # fp32 sums in another order across two processes


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddpdata")
    llava = make_llava(str(root / "llava"), n=10)
    vqa = make_vqa(str(root / "vqa"), n=10)
    return [{"path": llava, "images": str(root / "llava" / "images"), "weight": 1.0}, {"path": vqa, "weight": 1.0}]


def _config(tiny_checkpoint, sources, out, **overrides):
    config = {"stage": "sft", "init": tiny_checkpoint, "out": out, "steps": 4, "batch_size": 4, "lr": 3e-3,
              "warmup_steps": 1, "train_last_k": -1, "log_every": 1, "save_every": 0, "eval_scenes": 0,
              "heldout_scenes": 0, "device": "cpu", "sources": sources, "seed": 7}
    config.update(overrides)
    return config


def _run(tmp_path, name, config, processes=1, crash_at=None, toy_reward=False):
    spec = tmp_path / f"{name}.json"
    losses = tmp_path / f"{name}.losses.json"
    spec.write_text(json.dumps({"config": config, "losses": str(losses), "crash_at": crash_at,
                                "toy_reward": toy_reward}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(HERE)}
    if processes == 1:
        cmd = [sys.executable, os.path.join(HERE, "ddp_worker.py"), str(spec)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(29500 + os.getpid() % 1000), os.path.join(HERE, "ddp_worker.py"), str(spec)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if crash_at is not None:
        assert done.returncode != 0
        return None
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(losses.read_text())


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])  # two gloo processes: ~15 s each, so CI runs them
def test_two_processes_match_one_on_the_same_global_batch(tmp_path, tiny_checkpoint, sources, mode):
    single = _run(tmp_path, "single", _config(tiny_checkpoint, sources, str(tmp_path / "one"), batch_size=8))
    multi = _run(tmp_path, mode, _config(tiny_checkpoint, sources, str(tmp_path / "two"), batch_size=4,
                                         fsdp=mode == "fsdp"), processes=2)
    assert len(single) == len(multi) == 4
    assert single[0] != single[-1]  # it trains
    for a, b in zip(single, multi):
        assert abs(a - b) <= TOLERANCE * max(1.0, abs(a)), (single, multi)
    from nanovla.model.checkpoint import load_checkpoint

    one, _, _ = load_checkpoint(str(tmp_path / "one"))
    two, _, _ = load_checkpoint(str(tmp_path / "two"))  # rank 0's atomic save (gathered under FSDP)
    for (name, x), (_, y) in zip(one.state_dict().items(), two.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_checkpoint, sources):
    from nanovla.training.train import TrainConfig, train

    big = train(TrainConfig(**_config(tiny_checkpoint, sources, str(tmp_path / "big"), batch_size=8, steps=3)),
                log=lambda m: None)
    accum = train(TrainConfig(**_config(tiny_checkpoint, sources, str(tmp_path / "acc"), batch_size=4, steps=3,
                                        grad_accum=2)), log=lambda m: None)
    assert abs(big["final_loss"] - accum["final_loss"]) <= TOLERANCE * max(1.0, big["final_loss"])


def test_killed_run_resumes_exactly(tmp_path, tiny_checkpoint, sources):
    import nanovla.training.train as train_module
    from nanovla.model.checkpoint import load_checkpoint

    config = _config(tiny_checkpoint, sources, str(tmp_path / "straight"), steps=5, save_every=2, batch_size=3)
    train_module.train(train_module.TrainConfig(**config), log=lambda m: None)
    config["out"] = str(tmp_path / "killed")
    with killed_at(train_module, 3), pytest.raises(KeyboardInterrupt):
        train_module.train(train_module.TrainConfig(**config), log=lambda m: None)
    state = json.loads((tmp_path / "killed.resume" / "state.json").read_text())
    assert state["step"] == 2 and state["data"]["cursors"]
    train_module.train(train_module.TrainConfig(**config), log=lambda m: None)
    a, _, _ = load_checkpoint(str(tmp_path / "straight"))
    b, _, _ = load_checkpoint(str(tmp_path / "killed"))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)
    assert not (tmp_path / "killed.resume").exists()


def test_fsdp_run_killed_and_resumed_equals_an_uninterrupted_one(tmp_path, tiny_checkpoint, sources):
    """Rank 0 writes gathered weights + optimizer moments + data position; both ranks scatter them
    back on resume."""
    from nanovla.model.checkpoint import load_checkpoint

    straight = _config(tiny_checkpoint, sources, str(tmp_path / "straight"), batch_size=8, steps=4)
    _run(tmp_path, "straight", straight)
    resumed = _config(tiny_checkpoint, sources, str(tmp_path / "resumed"), batch_size=4, steps=4, save_every=2,
                      fsdp=True)
    _run(tmp_path, "killed", resumed, processes=2, crash_at=3)
    assert json.loads((tmp_path / "resumed.resume" / "state.json").read_text())["step"] == 2
    _run(tmp_path, "resumed", resumed, processes=2)
    a, _, _ = load_checkpoint(str(tmp_path / "straight"))
    b, _, _ = load_checkpoint(str(tmp_path / "resumed"))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


def test_rl_stage_runs_in_two_processes(tmp_path, tiny_checkpoint):
    """Stage rl under torchrun: each rank samples its own groups, the gradients are averaged, rank 0
    writes the checkpoint with the curves of both ranks' rewards."""
    from data_helpers import generate_scene_dir
    from nanovla.model.checkpoint import load_checkpoint

    scenes = generate_scene_dir(str(tmp_path / "scenes"), count=6, seed=5)
    config = _config(tiny_checkpoint, [], str(tmp_path / "rl"), stage="rl", data=scenes, steps=3, batch_size=2,
                     rl_group=4, rl_max_new_tokens=2, lr=1e-2, warmup_steps=0, cache_dir=str(tmp_path / "cache"))
    config.pop("sources")
    losses = _run(tmp_path, "rl", config, processes=2, toy_reward=True)
    assert len(losses) == 3
    metrics = json.loads((tmp_path / "rl" / "metrics.json").read_text())
    assert metrics["rl"]["steps"] == [1, 2, 3] and max(metrics["rl"]["informative_groups"]) > 0
    trained, _, _ = load_checkpoint(str(tmp_path / "rl"))
    start, _, _ = load_checkpoint(tiny_checkpoint)
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters()))
