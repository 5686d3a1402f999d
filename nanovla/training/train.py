"""The training loop shared by every stage.

    stage vision: (stage 0) the encoder learns the scenes' objects from their boxes with dense
                  kind/colour heads (nanovla.training.vision_stage); fresh model + tokenizer
    stage text  : the decoder learns the caption/answer language (text only; fresh model + tokenizer)
    stage align : only the projector trains (plus the vision encoder if `train_vision`), on captions
    stage sft   : projector + the last K decoder layers (+ vision), on a caption/answer/text mixture
                  balanced by answer tokens
    stage linearize: the MLP projector is replaced by a linear one fitted to it (nanovla.training.linearize)
    stage rl    : GRPO on rewards checked against the scene graphs (nanovla.training.rl)

CPU or CUDA (bf16 autocast), several GPUs with `torchrun` (DDP, or FSDP for decoders that do not
fit one GPU), gradient accumulation, activation checkpointing, optional `torch.compile`,
per-module learning rates, resumable from `<out>.resume/` (weights, optimizer state and the data
position; safetensors + JSON, never pickled), checkpoints written by rank 0 atomically, a
progress line with loss, tokens/s, MFU and ETA, and an evaluation written to metrics.json next to
the weights.

Data: the procedural tabletop scenes or a `nanovla data generate` directory (`data`), or data
sets from disk (`sources`, or a LLaVA/COCO/VQA/GQA/HF path in `data`; nanovla.data.formats),
sampled by `nanovla.data.packing.SourceMixture`.

With several processes or micro-steps the loss is the mean over every supervised token of the
global batch (each micro-batch's mean is weighted by its token count), so N processes x B rows
train exactly as one process with N*B rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..model.config import ModelConfig
from ..data.dataset import Mixture, SceneSet, corpus, load_data_dir, render_cache, to_mono, to_pixels
from ..data.formats import load_source
from ..data.packing import SourceMixture
from .feature_cache import pooled_feature_cache
from .linearize import linearize_stage
from .rl import train_rl_stage
from .scale import (
    FlopsModel,
    full_optimizer_tensors,
    full_state,
    load_full_optimizer,
    peak_flops,
    plain_copy,
    wrap_distributed,
)
from ..model.tokenizer import Tokenizer
from .common import (Progress, autocast_for, build_optimizer, evaluate_model, load_resume_state, lr_factor,
                           save_resume_state, set_trainable, setup_distributed)
from .config import STAGES, TrainConfig  # noqa: F401  (re-exported: nanovla.training.train.TrainConfig)
from .vision_stage import train_vision_stage
from ..model.vlm import VisionLanguageModel


# ----------------------------------------------------------------------------- the loop

def build_fresh(model_cfg: ModelConfig, cfg: TrainConfig, data: SceneSet | None, log,
                texts=None) -> tuple[VisionLanguageModel, Tokenizer]:
    texts = texts if texts is not None else corpus(data, np.random.default_rng(cfg.seed))
    tokenizer = Tokenizer.train(texts, vocab_size=cfg.vocab_size)
    model_cfg.decoder.vocab_size = tokenizer.vocab_size
    model = VisionLanguageModel(model_cfg, tokenizer.image_id)
    log(f"fresh model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"tokenizer of {tokenizer.vocab_size} tokens")
    return model, tokenizer


def load_sources(cfg: TrainConfig, log) -> list:
    """[(Source, weight)] from `sources`, or `data` as the one source."""
    entries = cfg.sources or [{"path": cfg.data, "format": cfg.data_format, "images": cfg.images}]
    out = []
    for entry in entries:
        source = load_source(entry["path"], entry.get("format", "auto"), images=entry.get("images", ""),
                             annotations=entry.get("annotations", ""), log=log)
        out.append((source, float(entry.get("weight", 1.0))))
        log(f"source {entry.get('name', entry['path'])}: {len(source)} {source.format} records "
            f"(weight {out[-1][1]}, {source.skipped_rows} rows skipped)")
    return out


def train(cfg: TrainConfig, model_cfg: ModelConfig | None = None, log=None) -> dict:
    cfg.validate()
    rank, world, device = setup_distributed(cfg.device)
    master = rank == 0
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True) if master else None)
    if cfg.global_batch:  # the same recipe on 1 or 8 GPUs: micro-steps make up the difference
        if cfg.global_batch % (cfg.batch_size * world):
            raise ValueError(f"global_batch {cfg.global_batch} is not a multiple of batch_size {cfg.batch_size} "
                             f"x {world} processes")
        cfg = dataclasses.replace(cfg, grad_accum=cfg.global_batch // (cfg.batch_size * world))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)

    # data first: a fresh tokenizer is trained on it
    if cfg.init:
        model, tokenizer, _ = load_checkpoint(cfg.init)
        model_cfg = model.cfg
    else:
        model_cfg = model_cfg or ModelConfig()
    v = model_cfg.vision
    data = sources = None
    if cfg.uses_sources():
        sources = load_sources(cfg, log)
    elif cfg.data:
        data = load_data_dir(cfg.data, v.image_height, v.image_width, log=log)
    else:
        if world > 1 and not master:
            dist.barrier()  # rank 0 renders the cache, the others then open it
        data = render_cache("train", cfg.data_seed, cfg.num_scenes, v.image_height, v.image_width, cfg.cache_dir,
                            workers=max(1, (os.cpu_count() or 2)), log=log)
        if world > 1 and master:
            dist.barrier()
    if not cfg.init:
        texts = None
        if sources is not None:
            texts = [t["content"] for s, _ in sources for r in s.records[:20000] for t in r.turns]
        model, tokenizer = build_fresh(model_cfg, cfg, data, log, texts)
    model.to(device).train()
    if cfg.stage == "vision":
        if world > 1:
            raise ValueError("stage vision runs in one process")
        return train_vision_stage(cfg, model, tokenizer, data, device, log)
    if cfg.stage == "linearize":
        if world > 1:
            raise ValueError("stage linearize runs in one process")
        if data is None:
            raise ValueError("stage linearize fits on images: the tabletop scenes or a nanovla data directory, "
                             "not `sources`")
        return linearize_stage(cfg, model, tokenizer, data, device, log)
    if cfg.stage == "rl":
        metrics = train_rl_stage(cfg, model, tokenizer, data, device, log, rank, world, sources=sources)
        if world > 1:
            dist.destroy_process_group()
        return metrics

    groups = set_trainable(model, cfg)
    if not groups["vision"]:
        model.vision.eval()  # a frozen encoder keeps its BatchNorm statistics
    if cfg.activation_checkpointing:
        model.decoder.activation_checkpointing = True
    if cfg.compile:
        for layer in model.decoder.layers:
            layer.compile(dynamic=True)
    trainable_ids = {id(p) for ps in groups.values() for p in ps}
    flops_model = FlopsModel(model, trainable_ids)
    resume_dir = cfg.out.rstrip("/") + ".resume"
    start, data_state, resuming = 0, None, False
    if os.path.isfile(os.path.join(resume_dir, "state.json")):
        resumed, _, _ = load_checkpoint(os.path.join(resume_dir, "model"))
        model.load_state_dict(resumed.state_dict())
        with open(os.path.join(resume_dir, "state.json")) as f:
            saved = json.load(f)
        start, data_state = int(saved["step"]), saved.get("data")
        log(f"resumed {cfg.stage} from {resume_dir} at step {start}")
        resuming = True
    ddp_model = wrap_distributed(model, cfg, world, device)
    if cfg.fsdp and world > 1:
        groups = set_trainable(model, cfg)  # fully_shard swapped the parameters for sharded ones
    opt = build_optimizer(groups, cfg)
    if resuming:
        if cfg.fsdp and world > 1:
            load_full_optimizer(model, opt, resume_dir)
        else:
            load_resume_state(resume_dir, model, opt)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)  # (a DTensor's numel is global)
    log(f"stage {cfg.stage}: training {n_train / 1e6:.2f}M parameters "
        f"({', '.join(k for k, ps in groups.items() if ps)}), {world} process(es) on {device}"
        + (", FSDP" if cfg.fsdp and world > 1 else "") + (f", {cfg.grad_accum} micro-steps" if cfg.grad_accum > 1 else ""))

    if cfg.stage == "text":
        shares, image_tokens = {"caption": 0.3, "qa": 0.4, "text": 0.3}, 0
    elif cfg.stage == "align":
        shares, image_tokens = {"caption": 1.0}, model.image_tokens
    else:
        shares = {"caption": cfg.caption_share, "qa": cfg.qa_share, "text": cfg.text_share, "mono": cfg.mono_share}
        image_tokens = model.image_tokens
    if sources is not None:
        mixture = SourceMixture(sources, tokenizer, image_tokens, model_cfg.decoder.max_seq_len, v.image_height,
                                v.image_width, seed=cfg.seed, pack=cfg.pack, log=log,
                                workers=cfg.data_workers)
        if data_state:
            mixture.load_state(data_state)
        log("mixture: " + ", ".join(f"{s.format}:{os.path.basename(s.path)} p={p:.2f} "
                                    f"(~{m:.1f} answer tokens)" for s, p, m in
                                    zip(mixture.sources, mixture.probs, mixture.mean_answer_tokens)))
    else:
        mixture = Mixture(data, tokenizer, image_tokens, shares, seed=cfg.seed + 1000 * rank + start,
                          max_len=model_cfg.decoder.max_seq_len, qa_turns=cfg.qa_turns,
                          qa_type_weights=cfg.qa_type_weights, text_all_pairs=cfg.text_all_pairs)
        if data_state and data_state.get("rng") and world == 1:
            mixture.rng.bit_generator.state = data_state["rng"]
        log("mixture: " + ", ".join(f"{k} p={p:.2f} (~{mixture.mean_answer_tokens[k]:.1f} answer tokens)"
                                    for k, p in zip(mixture.kinds, mixture.probs)))

    # a frozen encoder in front of a grid resampler: its pooled features are computed once per scene
    pooled = None
    if sources is None and image_tokens and not groups["vision"] and model.projector.poolable:
        if world > 1 and not master:
            dist.barrier()  # rank 0 computes the features, the others then open them
        t = time.perf_counter()
        pooled = pooled_feature_cache(model, data, cfg.cache_dir, device=device, log=log)
        log(f"pooled features of {len(data)} images ready in {time.perf_counter() - t:.0f} s")
        if world > 1 and master:
            dist.barrier()

    def micro_batches(step: int) -> list:
        if pooled is not None:  # (ids, mask, None, pooled features in placeholder order)
            out = []
            for _ in range(cfg.grad_accum):
                ids, mask, idx, mono = mixture.batch_rows(cfg.batch_size, tokenizer.pad_id)
                features = None if idx is None else np.ascontiguousarray(pooled[idx])
                if idx is not None and mono.any():  # grey images: their features are not in the cache
                    grey = to_pixels(to_mono(data.images[idx[mono]]))
                    features[mono] = model.pooled_features(torch.from_numpy(grey).to(device)).cpu().numpy()
                out.append((ids, mask, None, features))
            return out
        if sources is None:
            return [(*mixture.batch(cfg.batch_size, tokenizer.pad_id), None) for _ in range(cfg.grad_accum)]
        rows = mixture.plan(step, cfg.batch_size * world * cfg.grad_accum)
        out = []
        for m in range(cfg.grad_accum):
            first = (m * world + rank) * cfg.batch_size
            out.append((*mixture.materialize(rows[first: first + cfg.batch_size], tokenizer.pad_id), None))
        return out

    def data_position() -> dict:
        if sources is not None:
            return mixture.state()
        return {"rng": mixture.rng.bit_generator.state} if world == 1 else {}

    autocast = autocast_for(cfg, device)
    peak = peak_flops(cfg, device) * world
    progress = Progress(cfg.steps, cfg.stage, start) if master else None
    trainable = [p for ps in groups.values() for p in ps]
    token_weighted = world > 1 or cfg.grad_accum > 1
    loss_value = float("nan")
    tokens_since_log, flops_since_log = 0, 0.0
    for step in range(start, cfg.steps):
        factor = lr_factor(step, cfg)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        batches = micro_batches(step)
        counts = torch.tensor([float(m[:, 1:].sum()) for _, m, _, _ in batches])  # supervised targets per micro-batch
        total = counts.sum().clone()
        if world > 1:
            dist.all_reduce(total)
        opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        for m, (ids, mask, pixels, features) in enumerate(batches):
            ids_t = torch.from_numpy(ids).to(device)
            mask_t = torch.from_numpy(mask).to(device)
            pix_t = torch.from_numpy(pixels).to(device) if (pixels is not None and image_tokens) else None
            feat_t = torch.from_numpy(features).to(device) if features is not None else None
            last = m == len(batches) - 1
            sync = contextlib.nullcontext()
            if world > 1 and not last and not cfg.fsdp:
                sync = ddp_model.no_sync()
            with sync:
                if counts[m] == 0:  # every example of this micro-batch lost its image: a zero step
                    loss = sum(p.sum() for p in trainable) * 0.0
                    micro_mean = torch.zeros((), device=device)
                else:
                    with autocast:
                        micro_mean = ddp_model(ids_t, mask_t, pix_t, feat_t)
                    # token-weighted: sum over tokens / global token count (x world: DDP averages)
                    loss = micro_mean * (counts[m] * world / total) if token_weighted else micro_mean
                loss.backward()
            loss_sum += micro_mean.detach().float() * counts[m]
            tokens_since_log += int((ids != tokenizer.pad_id).sum()) * world
            n_images = 0 if pix_t is None else pix_t.shape[0]  # encoder FLOPs only where it ran
            flops_since_log += flops_model.step(int((ids != tokenizer.pad_id).sum()), ids.shape[1], n_images) * world
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()
        if world > 1:
            dist.all_reduce(loss_sum)
        # the mean over every supervised token of the global batch (one micro-batch: its own mean)
        loss_value = float(loss_sum / total.clamp(min=1)) if token_weighted else float(micro_mean.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step}; lower the learning rate")
        if master and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            progress.update(step, loss_value, tokens_since_log, flops_since_log, peak)
            tokens_since_log, flops_since_log = 0, 0.0
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            full = full_state(model, cfg, world)  # FSDP: collective on every rank
            optimizer_tensors = full_optimizer_tensors(model, opt, cfg, world)
            if master:
                target = model if full is None else plain_copy(model_cfg, model.image_token_id, full)
                save_resume_state(resume_dir, target, tokenizer, opt, step + 1, cfg, data_position(),
                                  optimizer_tensors)
            if world > 1:
                dist.barrier()  # no rank runs ahead of a resume point that is being written
    if progress:
        progress.close()

    metrics: dict = {"stage": cfg.stage, "steps": cfg.steps, "final_loss": loss_value,
                     "train_config": dataclasses.asdict(cfg)}
    if sources is not None:
        metrics["data"] = {"examples": mixture.examples, "skipped_images": mixture.skipped_images,
                           "skipped_rows": sum(s.skipped_rows for s in mixture.sources)}
    full = full_state(model, cfg, world)
    if master:
        final = model if full is None else plain_copy(model_cfg, model.image_token_id, full)
        final.eval()
        if cfg.stage != "text" and (cfg.eval_scenes or cfg.heldout_scenes):
            metrics.update(evaluate_model(final, tokenizer, cfg, device if full is None else "cpu", log))
        save_checkpoint(cfg.out, final, tokenizer, metrics)
        shutil.rmtree(resume_dir, ignore_errors=True)
        log(f"wrote {cfg.out}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics
