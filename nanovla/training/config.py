"""The training configuration: one dataclass, every field a `nanovla train` flag and a recipe key.

Its own module, free of PyTorch, so the CLI can build its `train` flags (and a robot with only a
bundle can run every other command) without importing torch; `nanovla.training.train` runs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..data.language import check_type_weights

STAGES = ("vision", "text", "align", "sft", "linearize", "rl")


@dataclass
class TrainConfig:
    stage: str = "sft"  # vision | text | align | sft | linearize | rl
    init: str = ""  # checkpoint to start from; "" builds a fresh model and tokenizer (vision/text stage)
    out: str = "runs/model"  # checkpoint directory written at the end (and at every save)
    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # rows per step per process (stage rl: prompts per step per process)
    lr: float = 1e-3  # peak learning rate (projector / decoder)
    vision_lr: float = 5e-4  # peak learning rate of the vision encoder when it trains
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay down to lr * this
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    train_vision: bool = False  # also train the vision encoder (end-to-end)
    train_last_k: int = 0  # decoder layers trained (from the top); -1 = all, with embeddings
    caption_share: float = 0.4  # mixture shares of *answer tokens*
    qa_share: float = 0.45
    text_share: float = 0.15
    mono_share: float = 0.0  # captions of the image in grey, without colour words (a mono8 camera)
    qa_turns: int = 4  # questions per image in a qa example (1..qa_turns)
    qa_type_weights: dict = field(default_factory=dict)  # e.g. {near_far = 4}: draw that question type 4x as often
    fit_scenes: int = 2000  # stage linearize: training scenes whose image tokens the linear projector is fitted on
    text_all_pairs: bool = False  # text-only turns name any (colour, kind) pair, held-out ones too (no image shows them)
    data: str = ""  # a data.jsonl directory; "" = the procedural tabletop scenes
    num_scenes: int = 40000  # tabletop scenes rendered for training
    data_seed: int = 0
    eval_scenes: int = 100  # eval split scenes scored at the end (0 = skip)
    heldout_scenes: int = 50  # heldout split scenes scored at the end
    eval_seed: int = 999  # never the training seed
    vocab_size: int = 1024  # tokenizer size for a fresh model
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0 = torch's default)
    log_every: int = 10
    save_every: int = 250  # steps between resumable saves
    seed: int = 1337
    cache_dir: str = "runs/cache"
    # ---- data sets from disk and scale-out (issue 5); every default keeps the behaviour above
    sources: list = field(default_factory=list)  # [{path, weight, format, images, annotations}]: in a
    # recipe `[[stage.sources]]`; weights are shares of answer tokens
    images: str = ""  # image folder when `data` is a LLaVA/COCO/VQA/GQA/HF data set
    data_format: str = "auto"  # format of `data` when it is not a nanovla directory
    pack: bool = True  # sources: pack whole examples into rows up to max_seq_len
    data_workers: int = 4  # sources: threads decoding images
    grad_accum: int = 1  # micro-steps per optimizer step: global batch = batch_size x grad_accum x processes
    global_batch: int = 0  # rows per optimizer step over all processes; sets grad_accum (0 = use grad_accum)
    projector_lr: float = 0.0  # peak learning rate of the projector (0 = lr)
    decoder_lr: float = 0.0  # peak learning rate of the decoder (0 = lr)
    dtype: str = "bfloat16"  # CUDA autocast dtype: bfloat16 | float16 | float32 (off); CPU runs float32
    fsdp: bool = False  # with several processes: shard parameters, gradients and optimizer state (FSDP2)
    activation_checkpointing: bool = False  # recompute decoder blocks in backward (less memory)
    compile: bool = False  # torch.compile each decoder block
    # ---- stage rl (GRPO, nanovla.training.rl)
    rl_group: int = 8  # completions sampled per prompt (the group their advantages are relative to)
    rl_temperature: float = 1.0  # sampling temperature of the rollouts
    rl_max_new_tokens: int = 64  # cap on a rollout's tokens
    rl_clip: float = 0.2  # policy ratio clipped to 1 +- rl_clip
    rl_kl: float = 0.04  # weight of the per-token k3 KL to the `init` model
    rl_epochs: int = 1  # optimizer steps per batch of rollouts
    peak_tflops: float = 0.0  # per-device peak for MFU (0 = known GPUs' bf16 dense peak; unknown on CPU)

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.stage in ("align", "sft", "linearize", "rl") and not self.init:
            raise ValueError(f"stage {self.stage!r} needs --init CHECKPOINT (the previous stage's output)")
        if self.grad_accum < 1:
            raise ValueError("grad_accum must be >= 1")
        check_type_weights(self.qa_type_weights)
        if self.stage == "rl":
            if self.rl_group < 2:
                raise ValueError(f"rl_group must be >= 2 (advantages are relative to the group), got {self.rl_group}")
            if self.rl_temperature <= 0 or self.rl_max_new_tokens < 1 or self.rl_epochs < 1:
                raise ValueError("rl_temperature must be > 0 and rl_max_new_tokens, rl_epochs >= 1")
            if not 0 < self.rl_clip < 1 or self.rl_kl < 0:
                raise ValueError(f"rl_clip must be in (0, 1) and rl_kl >= 0, got {self.rl_clip}, {self.rl_kl}")
            if self.caption_share + self.qa_share <= 0:
                raise ValueError("stage rl draws captions and questions: caption_share + qa_share must be > 0")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be bfloat16, float16 or float32, got {self.dtype!r}")
        for i, source in enumerate(self.sources):
            if not isinstance(source, dict) or "path" not in source:
                raise ValueError(f"sources[{i}] needs a path (and optionally weight, format, images, annotations)")
            unknown = sorted(set(source) - {"path", "weight", "format", "images", "annotations", "name"})
            if unknown:
                raise ValueError(f"sources[{i}] has unknown keys: {', '.join(unknown)}")

    def uses_sources(self) -> bool:
        """True when the data comes from data sets on disk rather than tabletop scenes."""
        return bool(self.sources) or bool(self.data) and not os.path.isfile(os.path.join(self.data, "data.jsonl"))
