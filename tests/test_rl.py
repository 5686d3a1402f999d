"""Stage rl (GRPO): the loss against a hand computation, KL 0 at the start, the rewards, a reward
that rises on a toy task, and a killed run resuming exactly."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from data_helpers import generate_scene_dir
from train_helpers import killed_at
from nanovla.training import rewards
from nanovla.training.rl import group_advantages, grpo_loss, pack, sample_group, train_rl_stage, Rollout


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return generate_scene_dir(str(tmp_path_factory.mktemp("scenes")), count=8, seed=5)


def _config(scene_dir, init, out, cache, **kw):
    from nanovla.training.train import TrainConfig

    base = dict(stage="rl", init=init, data=scene_dir, out=out, cache_dir=cache, steps=4, batch_size=3, rl_group=4,
                rl_max_new_tokens=6, lr=1e-3, warmup_steps=0, train_last_k=-1, eval_scenes=0, heldout_scenes=0,
                save_every=0, log_every=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_grpo_loss_matches_a_hand_computation():
    # two sequences: tokens 0,1 belong to sequence 0 (advantage +1), token 2 to sequence 1 (-1)
    logp = torch.tensor([-1.0, -2.0, -0.5])
    old = torch.tensor([-1.5, -2.0, -0.1])
    ref = torch.tensor([-1.0, -1.0, -0.5])
    adv = torch.tensor([1.0, -1.0])
    seq = torch.tensor([0, 0, 1])
    clip, beta = 0.2, 0.1
    loss, kl = grpo_loss(logp, old, ref, adv, seq, clip, beta)

    def k3(lp, rf):
        return math.exp(rf - lp) - (rf - lp) - 1

    r0, r1, r2 = math.exp(0.5), 1.0, math.exp(-0.4)  # ratios exp(logp - old)
    s0 = min(r0 * 1, min(max(r0, 0.8), 1.2) * 1)  # clipped above: 1.2
    s1 = min(r1 * 1, min(max(r1, 0.8), 1.2) * 1)
    s2 = min(r2 * -1, min(max(r2, 0.8), 1.2) * -1)  # r2 = 0.67 < 0.8: the clipped 0.8 * -1 is smaller
    seq0 = ((beta * k3(-1.0, -1.0) - s0) + (beta * k3(-2.0, -1.0) - s1)) / 2
    seq1 = beta * k3(-0.5, -0.5) - s2
    assert s0 == pytest.approx(1.2) and s2 == pytest.approx(-0.8)
    assert float(loss) == pytest.approx((seq0 + seq1) / 2, rel=1e-6)
    assert float(kl) == pytest.approx(((k3(-1.0, -1.0) + k3(-2.0, -1.0)) / 2 + 0.0) / 2, rel=1e-6)


def test_group_advantages_are_standardised_within_each_group():
    r = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 3.0, 0.0, 0.0]])
    a = group_advantages(r)
    np.testing.assert_allclose(a[0], [1, -1, -1, 1])
    np.testing.assert_array_equal(a[1], 0)  # all equal: nothing to learn
    np.testing.assert_allclose(a[2].mean(), 0, atol=1e-12)
    np.testing.assert_allclose(a[2].std(), 1)
    assert a[2, 1] > 0 > a[2, 0]


def test_kl_is_exactly_zero_when_the_policy_is_the_reference(tiny_checkpoint):
    from nanovla.model.checkpoint import load_checkpoint

    model, tok, _ = load_checkpoint(tiny_checkpoint)
    reference, _, _ = load_checkpoint(tiny_checkpoint)
    rng = np.random.default_rng(0)
    image = model.encode_image(torch.rand(1, 3, 64, 96))
    prompt, completions = sample_group(model, tok, image, "what is on the table?", 4, 8, 1.0, rng)
    completions = [c[:-1] if c and c[-1] in tok.special_ids().values() else c for c in completions]
    rollouts = [Rollout({}, prompt + c, len(prompt), "", False, 0.0) for c in completions]
    ids, mask = (torch.from_numpy(x) for x in pack(rollouts, tok.pad_id))
    pixels = torch.rand(1, 3, 64, 96).expand(4, -1, -1, -1)
    logp = model.token_logprobs(ids, mask, pixels=pixels)
    ref = reference.token_logprobs(ids, mask, pixels=pixels)
    seq = torch.nonzero(mask[:, 1:])[:, 0]
    loss, kl = grpo_loss(logp, logp.detach(), ref, torch.tensor([1.0, -1.0, 0.5, -0.5]), seq, 0.2, 0.04)
    assert float(kl) == 0.0
    assert int(mask.sum()) == sum(len(c) for c in completions) == logp.shape[0]


def test_sampled_groups_follow_the_cached_decoder(tiny_checkpoint):
    """Each sampled completion's tokens are what the uncached model would give the same draws:
    greedy sampling (a tiny temperature) of every row equals the engine's greedy answer."""
    from nanovla.model.checkpoint import load_checkpoint
    from nanovla.runtime.engine import Engine

    model, tok, _ = load_checkpoint(tiny_checkpoint)
    pixels = torch.rand(1, 3, 64, 96)
    image = model.encode_image(pixels)
    _, completions = sample_group(model, tok, image, "how many objects?", 3, 10, 1e-6,
                                  np.random.default_rng(1))
    engine = Engine(model, tok)
    greedy = engine.generate_uncached(engine.encode(pixels), "how many objects?", 10)
    for c in completions:
        body = c[:-1] if c and c[-1] in engine.stop_ids else c
        assert body == greedy


def test_rewards_score_answers_captions_and_format():
    objects = [{"color": "red", "kind": "cube"}, {"color": "blue", "kind": "ball"}]
    ref = "a red cube on the left at the back and a blue ball on the right at the front."
    assert rewards.answer_reward("Two.", "two") == 1.0 and rewards.answer_reward("three", "two") == 0.0
    perfect = rewards.caption_reward(ref, objects, ref)
    assert perfect == pytest.approx(1.0 + rewards.PLACE_WEIGHT)
    wrong_place = rewards.caption_reward("a red cube on the right at the back and a blue ball on the right at the "
                                         "front.", objects, ref)
    assert wrong_place == pytest.approx(1.0 + rewards.PLACE_WEIGHT * 0.5)
    invented = rewards.caption_reward(ref[:-1] + " and a green cone on the left at the front.", objects, ref)
    assert invented == pytest.approx(2 * 1 * 0.6667 / 1.6667 + rewards.PLACE_WEIGHT - rewards.INVENTED_PENALTY,
                                     rel=1e-3)
    assert rewards.format_reward("a red cube, a red cube", True) == -rewards.REPEAT_PENALTY
    assert rewards.format_reward("a red cube", False) == -rewards.UNFINISHED_PENALTY
    assert rewards.reward({"kind": "qa", "answer": "yes"}, "yes", True) == 1.0


def first_half_of_the_alphabet(prompt, text, finished):
    return float(bool(text) and "a" <= text[0].lower() <= "m")


def test_reward_rises_on_a_toy_task(tmp_path, scene_dir, tiny_checkpoint):
    """A verifiable toy reward (1 when the sample's text starts with a letter a-m): a tiny random
    model's mean reward rises within a few GRPO steps."""
    from nanovla.model.checkpoint import load_checkpoint
    from nanovla.data.dataset import load_data_dir

    torch.manual_seed(0)
    model, tok, _ = load_checkpoint(tiny_checkpoint)
    data = load_data_dir(scene_dir, 64, 96, log=lambda m: None)
    # one token per sample: a bandit over the vocabulary, so every advantage lands on the token it scored
    cfg = _config(scene_dir, tiny_checkpoint, str(tmp_path / "toy"), str(tmp_path / "cache"), steps=12, batch_size=4,
                  rl_group=8, rl_max_new_tokens=1, lr=1e-2, rl_kl=0.0, qa_share=1.0, caption_share=0.0)
    metrics = train_rl_stage(cfg, model, tok, data, torch.device("cpu"), lambda m: None,
                             reward_fn=first_half_of_the_alphabet)
    curve = metrics["rl"]["reward_mean"]
    assert np.mean(curve[-3:]) > np.mean(curve[:3]) + 0.25, curve


def test_rl_stage_writes_curves_and_a_loadable_checkpoint(tmp_path, scene_dir, tiny_checkpoint):
    from nanovla.runtime.torch_backend import TorchRuntime
    from nanovla.training.train import train

    out = str(tmp_path / "rl")
    train(_config(scene_dir, tiny_checkpoint, out, str(tmp_path / "cache"), eval_scenes=2), log=lambda m: None)
    with open(f"{out}/metrics.json") as f:
        metrics = json.load(f)
    assert metrics["stage"] == "rl" and metrics["rl"]["steps"] == [1, 2, 3, 4]
    assert len(metrics["rl"]["reward_mean"]) == len(metrics["rl"]["kl"]) == 4
    assert metrics["eval"]["images"] == 2
    assert (tmp_path / "rl" / "rl_curves.png").stat().st_size > 1000
    TorchRuntime(out).describe(np.zeros((480, 640, 3), np.uint8))


def test_killed_rl_stage_resumes_exactly(tmp_path, scene_dir, tiny_checkpoint, monkeypatch):
    import nanovla.training.rl as rl_module
    from nanovla.model.checkpoint import load_checkpoint
    from nanovla.training.train import train

    cache = str(tmp_path / "cache")
    monkeypatch.setattr(rl_module, "reward", first_half_of_the_alphabet)  # a reward the random model can earn
    train(_config(scene_dir, tiny_checkpoint, str(tmp_path / "straight"), cache, steps=5, save_every=2),
          log=lambda m: None)
    cfg = _config(scene_dir, tiny_checkpoint, str(tmp_path / "killed"), cache, steps=5, save_every=2)
    with killed_at(rl_module, 3), pytest.raises(KeyboardInterrupt):
        train(cfg, log=lambda m: None)
    assert (tmp_path / "killed.resume" / "state.json").is_file()
    train(cfg, log=lambda m: None)
    a, _, _ = load_checkpoint(str(tmp_path / "straight"))
    b, _, _ = load_checkpoint(str(tmp_path / "killed"))
    start, _, _ = load_checkpoint(tiny_checkpoint)
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), start.parameters()))  # it did train
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)
    curves = [json.load(open(tmp_path / run / "metrics.json"))["rl"] for run in ("straight", "killed")]
    assert curves[0] == curves[1] and max(curves[0]["informative_groups"]) > 0
    assert not (tmp_path / "killed.resume").exists()


def test_rl_stage_refuses_bad_settings(tiny_checkpoint):
    from nanovla.training.train import TrainConfig

    with pytest.raises(ValueError, match="rl_group"):
        TrainConfig(stage="rl", init=tiny_checkpoint, rl_group=1).validate()
    with pytest.raises(ValueError, match="needs --init"):
        TrainConfig(stage="rl").validate()


def test_reference_rewards_use_exact_match_for_short_answers_and_token_f1_for_long_ones():
    assert rewards.reference_reward("Two", ["2", "two"]) == 1.0
    assert rewards.reference_reward("two objects", ["two"]) == 0.0  # a short answer must match exactly
    long = "a red cube next to a blue ball"
    # articles dropped: "red cube" against "red cube next to blue ball": precision 1, recall 2/6
    assert rewards.reference_reward("a red cube", [long]) == pytest.approx(2 * 1.0 * (1 / 3) / (1 + 1 / 3))
    assert rewards.token_f1("", "") == 1.0 and rewards.token_f1("cat", "") == 0.0
    assert rewards.reward({"kind": "reference", "references": ["yes"]}, "yes", True) == 1.0


def test_rl_on_a_data_set_from_disk_rewards_reference_answers(tmp_path, tiny_checkpoint):
    """VQA records (with every annotator's answer) and a LLaVA file with a missing image: the stage
    draws only records with an image and an answer, skips the undecodable one, and trains."""
    from data_helpers import make_llava, make_vqa
    from nanovla.training.train import train

    vqa = make_vqa(str(tmp_path / "vqa"), n=4)
    llava = make_llava(str(tmp_path / "llava"), n=4)
    with open(tmp_path / "llava" / "images" / os.listdir(tmp_path / "llava" / "images")[0], "wb") as f:
        f.write(b"not a jpeg")
    sources = [{"path": vqa, "weight": 1.0}, {"path": llava, "images": str(tmp_path / "llava" / "images")}]
    out = str(tmp_path / "rl")
    cfg = _config("", tiny_checkpoint, out, str(tmp_path / "cache"), sources=sources, data="", steps=3,
                  batch_size=4, rl_max_new_tokens=4)
    seen = []
    import nanovla.training.rl as rl_module

    def spy(prompt, text, finished):
        seen.append(prompt)
        return rewards.reward(prompt, text, finished)

    original = rl_module.reward
    rl_module.reward = spy
    try:
        train(cfg, log=lambda m: None)
    finally:
        rl_module.reward = original
    assert {p["kind"] for p in seen} == {"reference"} and {p["type"] for p in seen} <= {"vqa", "llava"}
    assert all(p["image"].shape == (64, 96, 3) for p in seen)
    vqa_refs = [p["references"] for p in seen if p["type"] == "vqa"]
    assert vqa_refs and all(len(r) == 10 for r in vqa_refs)  # every annotator's answer
    metrics = json.load(open(f"{out}/metrics.json"))
    assert metrics["rl"]["steps"] == [1, 2, 3] and metrics["data"]["skipped_images"] >= 1
