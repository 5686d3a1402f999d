"""Stage rl: GRPO on verifiable scene rewards (nanovla.training.rewards), from an SFT checkpoint.

Each step, per process:
1. draw `batch_size` prompts from the training scenes: the describe prompt (share
   caption_share / (caption_share + qa_share)) or one question (types weighted by qa_type_weights);
2. for each prompt sample a group of `rl_group` completions at `rl_temperature` with the KV cache:
   the image prefix and question are prefilled once, then the group decodes as one batch;
3. reward every completion; advantage = (reward - group mean) / group std. A group whose rewards
   are all equal teaches nothing (its advantages are 0) and is left out of the update;
4. `rl_epochs` optimizer steps on the clipped policy-ratio objective over the sampled tokens
   (ratio to the policy that sampled them, clipped to 1 +- rl_clip) plus rl_kl x the per-token
   k3 estimate of KL(policy || reference), the reference being the frozen `init` checkpoint:
   k3 = exp(ref - logp) - (ref - logp) - 1. Each sequence's tokens are averaged, then the sequences.

On data sets from disk (`sources` or a LLaVA/COCO/VQA/GQA/HF `data`) a prompt is a record's first
question about its image and the reward compares the reply with the record's reference answers
(nanovla.training.rewards.reference_reward); captions and question types apply to the tabletop scenes only.

With a frozen encoder and the grid resampler the scenes' pooled features come from the feature
cache (as in sft); otherwise the encoder runs on the pixels. Several processes (`torchrun`): each
rank draws its own prompts (groups never span ranks) and the gradients are averaged, weighted by
each rank's number of sequences. Resumable from `<out>.resume/` like the other stages (weights,
optimizer, the sampling generator and the curves). metrics.json gets
"rl": {"steps", "reward_mean", "kl", ...} and `rl_curves.png` is drawn next to it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import torch
import torch.distributed as dist

from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..data.dataset import SceneSet
from ..data.formats import record_image
from ..data.language import caption, sample_questions
from .feature_cache import pooled_feature_cache
from .rewards import reward
from ..runtime.preprocess import ImageError, resize_uint8
from ..runtime.prompts import DESCRIBE_PROMPT
from ..runtime.sampling import sample
from ..model.tokenizer import Tokenizer
from .common import (Progress, autocast_for, build_optimizer, evaluate_model, load_resume_state,
                           lr_factor, save_resume_state, set_trainable)
from .config import TrainConfig
from ..model.vlm import VisionLanguageModel


@dataclasses.dataclass
class Rollout:
    prompt: dict  # {'kind', 'type', 'question', 'image_index' or 'image', and what its reward needs}
    ids: list[int]  # the whole sequence: image prefix, question, completion (its end token included)
    n_prompt: int  # ids[:n_prompt] is the prompt
    text: str
    finished: bool  # ended with <|assistant_end|>
    reward: float


def draw_prompts(data: SceneSet, rng: np.random.Generator, n: int, cfg: TrainConfig) -> list[dict]:
    total = cfg.caption_share + cfg.qa_share
    p_caption = cfg.caption_share / total if total > 0 else 0.5
    prompts = []
    while len(prompts) < n:
        i = int(rng.integers(len(data)))
        scene = data.scenes[i]
        if rng.random() < p_caption:
            prompts.append({"kind": "caption", "type": "caption", "question": DESCRIBE_PROMPT, "image_index": i,
                            "objects": [o.to_json() for o in scene.objects], "caption": caption(scene)})
            continue
        qs = sample_questions(scene, rng, data.split, k=1, type_weights=cfg.qa_type_weights)
        if qs:
            prompts.append({"kind": "qa", "type": qs[0]["type"], "question": qs[0]["question"], "image_index": i,
                            "answer": qs[0]["answer"]})
    return prompts


def draw_reference_prompts(sources: list, rng: np.random.Generator, n: int, height: int, width: int,
                           skipped: dict) -> list[dict]:
    """Prompts from data sets on disk [(Source, weight)]: a record's first question about its image,
    rewarded against its reference answers (VQA: every annotator's). Records without an image or
    an answer are never drawn; an image that does not decode is skipped and counted in `skipped`."""
    usable = [[i for i, r in enumerate(s.records) if r.image is not None and len(r.turns) >= 2] for s, _ in sources]
    weights = np.array([w if idx else 0.0 for (_, w), idx in zip(sources, usable)], dtype=np.float64)
    if weights.sum() <= 0:
        raise ValueError("stage rl: no record of the data sets has an image and an answer to reward")
    prompts: list[dict] = []
    while len(prompts) < n:
        k = int(rng.choice(len(sources), p=weights / weights.sum()))
        record = sources[k][0].records[usable[k][int(rng.integers(len(usable[k])))]]
        try:
            image = resize_uint8(record_image(record), height, width)
        except ImageError:
            skipped["images"] = skipped.get("images", 0) + 1
            continue
        prompts.append({"kind": "reference", "type": sources[k][0].format, "question": record.turns[0]["content"],
                        "references": record.answers or [record.turns[1]["content"]], "image": image})
    return prompts


@torch.no_grad()
def sample_group(model: VisionLanguageModel, tokenizer: Tokenizer, image_embeds: torch.Tensor, question: str,
                 group: int, max_new_tokens: int, temperature: float, rng: np.random.Generator
                 ) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, `group` completions) for one image (1, N, C) and question: the prompt is prefilled
    once, its KV cache repeated for the group, and the group decodes as one batch. A completion ends
    with the control token that stopped it (kept: it is a sampled action too)."""
    prompt = tokenizer.image_prefix(image_embeds.shape[1]) + tokenizer.question_suffix(question)
    device = image_embeds.device
    budget = min(max_new_tokens, model.cfg.decoder.max_seq_len - len(prompt))
    logits, cache = model.prefill(torch.tensor([prompt], device=device), image_embeds)
    cache = [(k.expand(group, -1, -1, -1).contiguous(), v.expand(group, -1, -1, -1).contiguous()) for k, v in cache]
    logits = logits.expand(group, -1)
    stop = np.array(sorted(tokenizer.special_ids().values()))
    out: list[list[int]] = [[] for _ in range(group)]
    done = np.zeros(group, bool)
    for i in range(budget):
        tokens = sample(logits.float().cpu().numpy(), temperature, 0, 1.0, rng)
        for g in np.flatnonzero(~done):
            out[g].append(int(tokens[g]))
        done |= np.isin(tokens, stop)
        if done.all() or i + 1 == budget:
            break
        logits, cache = model.prefill(torch.from_numpy(tokens)[:, None].to(device), None, past=cache,
                                      start_pos=len(prompt) + i)
    return prompt, out


def group_advantages(rewards: np.ndarray) -> np.ndarray:
    """(groups, G) rewards -> (groups, G) advantages: (r - group mean) / group std (0 where the std is 0)."""
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, keepdims=True)
    return np.where(std > 1e-8, (rewards - mean) / np.maximum(std, 1e-8), 0.0)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              seq_index: torch.Tensor, clip: float, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (N,) of the policy, the sampling policy and the reference; advantages (S,)
    per sequence; seq_index (N,) each token's sequence. Returns (loss, mean per-sequence KL): the
    clipped surrogate plus kl_coef x k3, averaged over each sequence's tokens, then over sequences."""
    n_seq = advantages.shape[0]
    ratio = torch.exp(logp - old_logp)
    adv = advantages[seq_index]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    delta = ref_logp - logp
    kl = torch.exp(delta) - delta - 1
    counts = torch.bincount(seq_index, minlength=n_seq).clamp(min=1).to(logp.dtype)

    def per_sequence(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_seq, dtype=x.dtype, device=x.device).index_add(0, seq_index, x) / counts

    return per_sequence(kl_coef * kl - surrogate).mean(), per_sequence(kl.detach()).mean()


def pack(rollouts: list[Rollout], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (S, T), mask (S, T)) right-padded; the mask covers each completion."""
    T = max(len(r.ids) for r in rollouts)
    ids = np.full((len(rollouts), T), pad_id, np.int64)
    mask = np.zeros((len(rollouts), T), np.int64)
    for s, r in enumerate(rollouts):
        ids[s, : len(r.ids)] = r.ids
        mask[s, r.n_prompt: len(r.ids)] = 1
    return ids, mask


def plot_curves(history: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    window = max(1, len(history["steps"]) // 20)  # a moving mean over ~5 % of the run over the raw curve
    for ax, key, colour, title in ((a, "reward_mean", "tab:blue", "reward (mean over the step's samples)"),
                                   (b, "kl", "tab:red", "KL to the starting model (k3, updated groups)")):
        values = np.asarray(history[key], dtype=float)
        ax.plot(history["steps"], values, lw=0.6, color=colour, alpha=0.35)
        if len(values) >= window > 1:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(history["steps"][window - 1:], smooth, lw=1.6, color=colour, label=f"mean of {window} steps")
            ax.legend(loc="lower right", fontsize=8)
        ax.set(title=title, xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_rl_stage(cfg: TrainConfig, model: VisionLanguageModel, tokenizer: Tokenizer, data: SceneSet | None,
                   device: torch.device, log, rank: int = 0, world: int = 1, reward_fn=None,
                   sources: list | None = None) -> dict:
    """Tabletop scenes (`data`, rewarded against their scene graphs) or data sets from disk
    (`sources`, [(Source, weight)], rewarded against their reference answers).
    reward_fn(prompt, text, finished) -> float: `nanovla.training.rewards.reward` unless a test brings its own."""
    reward_fn = reward_fn or reward
    if data is None and not sources:
        raise ValueError("stage rl needs tabletop scenes, a nanovla data directory or data sets with answers")
    master = rank == 0
    groups = set_trainable(model, cfg)
    if not groups["vision"]:
        model.vision.eval()
    reference, _, _ = load_checkpoint(cfg.init)
    reference.to(device).eval().requires_grad_(False)
    pooled = None
    if data is not None and not groups["vision"] and model.projector.poolable:
        if world > 1 and not master:
            dist.barrier()
        pooled = pooled_feature_cache(model, data, cfg.cache_dir, device=device, log=log)
        if world > 1 and master:
            dist.barrier()
    opt = build_optimizer(groups, cfg)
    trainable = [p for ps in groups.values() for p in ps]
    rng = np.random.default_rng(cfg.seed + 1000 * rank)
    history: dict = {"steps": [], "reward_mean": [], "kl": [], "loss": [], "informative_groups": []}
    resume_dir = cfg.out.rstrip("/") + ".resume"
    start = 0
    if os.path.isfile(os.path.join(resume_dir, "state.json")):
        resumed, _, _ = load_checkpoint(os.path.join(resume_dir, "model"))
        model.load_state_dict(resumed.state_dict())
        start = load_resume_state(resume_dir, model, opt)
        with open(os.path.join(resume_dir, "state.json")) as f:
            saved = json.load(f)["data"]
        rng.bit_generator.state = saved["rng"][rank] if world > 1 else saved["rng"]
        history = saved["history"]
        log(f"resumed rl from {resume_dir} at step {start}")
    log(f"stage rl: training {sum(p.numel() for p in trainable) / 1e6:.2f}M parameters, {cfg.batch_size} prompts x "
        f"{cfg.rl_group} samples per step per process, {world} process(es) on {device}")

    v = model.cfg.vision
    skipped: dict = {}

    def image_inputs(prompts: list[dict]) -> dict:
        """The prompts' images as the model's `pooled` (cached scene features) or `pixels` keyword."""
        if pooled is not None:
            idx = [p["image_index"] for p in prompts]
            return {"pooled": torch.from_numpy(np.ascontiguousarray(pooled[idx])).to(device)}
        images = np.stack([data.images[p["image_index"]] if "image_index" in p else p["image"] for p in prompts])
        return {"pixels": torch.from_numpy(images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0).to(device)}

    def embeds_of(prompt: dict) -> torch.Tensor:
        with torch.no_grad():
            inputs = image_inputs([prompt])
            if "pooled" in inputs:
                return model.projector.from_pooled(inputs["pooled"])
            return model.encode_image(inputs["pixels"])

    def draw(n: int) -> list[dict]:
        if data is not None:
            return draw_prompts(data, rng, n, cfg)
        return draw_reference_prompts(sources, rng, n, v.image_height, v.image_width, skipped)

    autocast = autocast_for(cfg, device)
    stop_ids = set(tokenizer.special_ids().values())
    progress = Progress(cfg.steps, "rl", start, unit="sampled tok") if master else None
    loss_value = float("nan")
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, cfg)
        model.eval()
        rollouts: list[list[Rollout]] = []
        sampled_tokens = 0
        for prompt in draw(cfg.batch_size):
            ids, completions = sample_group(model, tokenizer, embeds_of(prompt), prompt["question"],
                                            cfg.rl_group, cfg.rl_max_new_tokens, cfg.rl_temperature, rng)
            group = []
            for c in completions:
                finished = bool(c) and c[-1] == tokenizer.assistant_end_id
                if c and not finished and c[-1] in stop_ids:  # another control token (an <|image|> would
                    c = c[:-1]  # add a placeholder): trained without it, and the sample counts as unfinished
                text = tokenizer.decode(c).strip()
                group.append(Rollout(prompt, ids + c, len(ids), text, finished, reward_fn(prompt, text, finished)))
                sampled_tokens += len(c)
            rollouts.append(group)
        rewards = np.array([[r.reward for r in g] for g in rollouts])
        advantages = group_advantages(rewards)
        informative = [i for i in range(len(rollouts)) if np.any(advantages[i] != 0)]
        chosen = [r for i in informative for r in rollouts[i]]
        seq_adv = torch.tensor([a for i in informative for a in advantages[i]], dtype=torch.float32, device=device)
        counts = torch.tensor([float(len(chosen))], device=device)
        if world > 1:
            dist.all_reduce(counts)
        model.train()
        if not groups["vision"]:
            model.vision.eval()
        kl_value = 0.0
        if chosen:
            ids_np, mask_np = pack(chosen, tokenizer.pad_id)
            ids_t, mask_t = torch.from_numpy(ids_np).to(device), torch.from_numpy(mask_np).to(device)
            seq_index = torch.nonzero(mask_t[:, 1:])[:, 0]  # row-major, as token_logprobs orders them
            inputs = image_inputs([r.prompt for r in chosen])
            with torch.no_grad(), autocast:
                ref_logp = reference.token_logprobs(ids_t, mask_t, **inputs)
                old_logp = model.token_logprobs(ids_t, mask_t, **inputs) if cfg.rl_epochs > 1 else None
        for epoch in range(cfg.rl_epochs):
            opt.zero_grad(set_to_none=True)
            if chosen:
                with autocast:
                    logp = model.token_logprobs(ids_t, mask_t, **inputs)
                loss, kl = grpo_loss(logp, logp.detach() if old_logp is None else old_logp, ref_logp, seq_adv,
                                     seq_index, cfg.rl_clip, cfg.rl_kl)
                (loss * (len(chosen) * world / counts.clamp(min=1))).backward()
                loss_value, kl_value = float(loss.detach()), float(kl)
            if world > 1:  # every rank takes part, with zero gradients when it had nothing to learn from
                for p in trainable:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad /= world
            if not chosen and world == 1:
                break
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()
        stats = torch.tensor([float(rewards.mean()), kl_value, float(len(informative))], device=device)
        if world > 1:
            dist.all_reduce(stats)
            stats /= world
        history["steps"].append(step + 1)
        history["reward_mean"].append(round(float(stats[0]), 5))
        history["kl"].append(round(float(stats[1]), 6))
        history["loss"].append(round(loss_value, 6) if chosen else None)
        history["informative_groups"].append(float(stats[2]))
        if master and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            progress.update(step, loss_value, sampled_tokens * world,
                            extra=f"reward {stats[0]:.3f} kl {stats[1]:.4f} groups {stats[2]:.1f}/{cfg.batch_size}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            states = [rng.bit_generator.state]
            if world > 1:
                states = [None] * world
                dist.all_gather_object(states, rng.bit_generator.state)
            if master:
                save_resume_state(resume_dir, model, tokenizer, opt, step + 1, cfg,
                                  {"rng": states if world > 1 else states[0], "history": history})
            if world > 1:
                dist.barrier()
    if progress:
        progress.close()
    metrics: dict = {"stage": "rl", "steps": cfg.steps, "final_loss": loss_value,
                     "train_config": dataclasses.asdict(cfg), "rl": history}
    if sources:
        metrics["data"] = {"skipped_images": skipped.get("images", 0)}
    if master:
        model.eval()
        if cfg.eval_scenes or cfg.heldout_scenes:
            metrics.update(evaluate_model(model, tokenizer, cfg, device, log))
        save_checkpoint(cfg.out, model, tokenizer, metrics)
        plot_curves(history, os.path.join(cfg.out, "rl_curves.png"))
        shutil.rmtree(resume_dir, ignore_errors=True)
        log(f"wrote {cfg.out} (reward {history['reward_mean'][0]:.3f} at step 1, "
            f"{np.mean(history['reward_mean'][-10:]):.3f} over the last 10 steps)")
    if world > 1:
        dist.barrier()
    return metrics
