"""`nanovla init | generate | export-hf`: pretrained parts and the Hugging Face decoder format
(PyTorch; init also needs the [hf] extra for CLIP/SigLIP).

    nanovla init --encoder ENC --decoder HF_DIR --out CKPT [--image-tokens N] [--max-seq-len T]
    nanovla generate --model CKPT --raw "TEXT" [--max-new-tokens N] [--json]
    nanovla export-hf --model CKPT --out HF_DIR        (the decoder as a transformers directory)
"""

from __future__ import annotations

import json
import os
import time

from ..model.checkpoint import load_checkpoint
from ..model.decoder_hf import PROVENANCE_FILE, export_hf
from ..model.pretrained import init_checkpoint
from ..runtime.base import resolve_model
from ..runtime.engine import Engine
from ..runtime.sampling import SamplingConfig
from .common import log


def cmd_init(args) -> int:
    size = None
    if args.image_size:
        try:
            h, w = (int(x) for x in args.image_size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--image-size {args.image_size!r}: expected HEIGHTxWIDTH, e.g. 224x224") from None
        size = (h, w)
    init_checkpoint(args.encoder, args.decoder, args.out, image_tokens=args.image_tokens,
                    max_seq_len=args.max_seq_len, image_size=size, resampler=args.resampler, seed=args.seed,
                    log=log)
    return 0


def raw_generate(model_path: str, text: str, max_new_tokens: int, device: str = "cpu") -> dict:
    """Greedy plain continuation of `text` (no chat template): {"text", "token_ids", ...}."""
    path = resolve_model(model_path)
    model, tokenizer, _ = load_checkpoint(path, device=device)
    engine = Engine(model, tokenizer, device)
    provenance_file = os.path.join(path, PROVENANCE_FILE)
    if os.path.isfile(provenance_file):  # stop where the pretrained model's own generate() stops
        with open(provenance_file) as f:
            eos = json.load(f).get("eos_token_id")
        engine.stop_ids |= set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    # the checkpoint tokenizer's own post-processor adds its BOS where the pretrained model expects one
    prompt = tokenizer.hf.encode(text, add_special_tokens=True).ids
    if not prompt:
        raise ValueError("--raw text encodes to no tokens")
    t0 = time.perf_counter()
    ids = engine.generate_ids(None, prompt, SamplingConfig(max_new_tokens=max_new_tokens))
    return {"text": tokenizer.decode(ids), "token_ids": ids, "prompt_ids": prompt,
            "latency_ms": round((time.perf_counter() - t0) * 1000, 2)}


def cmd_generate(args) -> int:
    if args.raw is None:
        raise ValueError("generate needs --raw TEXT (plain continuation; use `ask` for questions about images)")
    out = raw_generate(args.model, args.raw, args.max_new_tokens, args.device)
    if args.json:
        print(json.dumps({"text": out["text"], "token_ids": out["token_ids"]}), flush=True)
    else:
        print(out["text"], flush=True)
    return 0


def cmd_export_hf(args) -> int:
    model, tokenizer, _ = load_checkpoint(args.model)
    base = None
    provenance_file = os.path.join(args.model, PROVENANCE_FILE)
    if os.path.isfile(provenance_file):
        with open(provenance_file) as f:
            base = json.load(f).get("hf_config")
    export_hf(args.out, model.decoder, tokenizer, base)
    log(f"wrote {args.out} (decoder only; load with transformers' AutoModelForCausalLM)")
    return 0
