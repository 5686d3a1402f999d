"""CLI commands for pretrained parts and data sets on disk (added to `nanovla` by cli.py):

    nanovla init --encoder ENC --decoder HF_DIR --out CKPT [--image-tokens N] [--max-seq-len T]
    nanovla generate --model CKPT --raw "TEXT" [--max-new-tokens N] [--json]
    nanovla export-hf --model CKPT --out HF_DIR        (the decoder as a transformers directory)
    nanovla data from-rosbag BAG --topic TOPIC --out DIR [--every N]
    nanovla data inspect PATH [--format F] [--images DIR]  (counts what a data source yields)
    nanovla data to-yolo DIR --out YOLO_DIR [--classes kind|color_kind]  (ultralytics detection layout)
    nanovla eval --data PATH --format llava|coco|vqa|gqa|hf [--images DIR]   (see cli.py)
"""

from __future__ import annotations

import json
import os
import sys
import time


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_init(args) -> int:
    from ..model.pretrained import init_checkpoint

    size = None
    if args.image_size:
        try:
            h, w = (int(x) for x in args.image_size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--image-size {args.image_size!r}: expected HEIGHTxWIDTH, e.g. 224x224") from None
        size = (h, w)
    init_checkpoint(args.encoder, args.decoder, args.out, image_tokens=args.image_tokens,
                    max_seq_len=args.max_seq_len, image_size=size, resampler=args.resampler, seed=args.seed,
                    log=_log)
    return 0


def raw_generate(model_path: str, text: str, max_new_tokens: int, device: str = "cpu") -> dict:
    """Greedy plain continuation of `text` (no chat template): {"text", "token_ids", ...}."""
    from ..model.checkpoint import load_checkpoint
    from ..runtime.engine import Engine, SamplingConfig
    from ..model.decoder_hf import PROVENANCE_FILE
    from ..runtime.base import resolve_model

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
    from ..model.checkpoint import load_checkpoint
    from ..model.decoder_hf import PROVENANCE_FILE, export_hf

    model, tokenizer, _ = load_checkpoint(args.model)
    base = None
    provenance_file = os.path.join(args.model, PROVENANCE_FILE)
    if os.path.isfile(provenance_file):
        with open(provenance_file) as f:
            base = json.load(f).get("hf_config")
    export_hf(args.out, model.decoder, tokenizer, base)
    _log(f"wrote {args.out} (decoder only; load with transformers' AutoModelForCausalLM)")
    return 0


def cmd_from_rosbag(args) -> int:
    from ..data.rosbag import rosbag_to_dataset

    summary = rosbag_to_dataset(args.bag, args.topic, args.out, every=args.every, log=_log)
    print(json.dumps(summary), flush=True)
    return 0


def cmd_inspect(args) -> int:
    from ..data.formats import load_source

    source = load_source(args.path, args.format, images=args.images, log=_log)
    print(json.dumps(source.summary(check_images=args.check_images), indent=2), flush=True)
    return 0


def cmd_to_yolo(args) -> int:
    from ..data.yolo import export_yolo

    counts = export_yolo(args.data, args.out, classes=args.classes, val_fraction=args.val_fraction, log=_log)
    _log(f"wrote {counts['train']} train + {counts['val']} val images, {counts['objects']} boxes "
         f"({counts['skipped']} rows skipped) and {os.path.join(args.out, 'dataset.yaml')}")
    return 0


def wants_format_eval(args) -> bool:
    """True unless `--data` is a nanovla directory with scene labels (Core's `eval` scores those)."""
    if getattr(args, "format", ""):
        return True
    path = os.path.join(args.data, "data.jsonl")
    if not os.path.isfile(path):
        return os.path.exists(args.data)  # a file or directory of another format
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False  # Core's eval reports the bad row
    return isinstance(row, dict) and "objects" not in row and "qa" not in row  # frames only (a rosbag)


def cmd_eval_format(args) -> int:
    """`nanovla eval --format F`: score a checkpoint or bundle on a LLaVA/COCO/VQA/GQA/HF data set."""
    from .common import load_runtime_from_args
    from ..data.formats import load_source
    from ..evaluation.formats import evaluate_source

    source = load_source(args.data, args.format or "auto", images=args.images, log=_log)
    runtime = load_runtime_from_args(args)
    metrics = evaluate_source(runtime, source, limit=args.limit, log=_log if args.verbose else None,
                              max_new_tokens=args.max_new_tokens)
    metrics.update({"data": args.data, "format": source.format, "model": runtime.model_path,
                    "backend": runtime.backend})
    if not args.examples:
        metrics.pop("wrong_examples", None)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:  # as Core's eval: stdout always, a file only when asked (never into the CWD unasked)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, args.out)
        _log(f"wrote {args.out}")
    return 0


def add_parsers(sub, data_sub) -> None:
    e = sub.choices["eval"]  # Core's eval, extended to data sets in standard formats
    e.add_argument("--format", default="", help="llava | coco | vqa | gqa | hf | nanovla (default: a nanovla "
                                                "data.jsonl directory as before, else detected)")
    e.add_argument("--images", default="", help="image folder of a LLaVA/COCO/VQA/GQA data set")

    i = sub.add_parser("init", help="a checkpoint from a pretrained encoder and decoder (untrained projector)")
    i.add_argument("--encoder", required=True,
                   help="yolov9t | a local ultralytics .pt | a local CLIP/SigLIP directory")
    i.add_argument("--decoder", required=True, help="a local Hugging Face Llama/Qwen2/SmolLM2 directory")
    i.add_argument("--out", required=True, help="checkpoint directory to write")
    i.add_argument("--image-tokens", type=int, default=0, help="image tokens per frame (default 48 / 64)")
    i.add_argument("--max-seq-len", type=int, default=0, help="context length (default min(model's, 2048))")
    i.add_argument("--image-size", default="", help="HEIGHTxWIDTH model input (default: the encoder's)")
    i.add_argument("--resampler", default="auto", choices=("auto", "grid", "perceiver"))
    i.add_argument("--seed", type=int, default=0, help="projector initialisation seed")
    i.set_defaults(func=cmd_init)

    g = sub.add_parser("generate", help="plain text continuation (no chat template)")
    g.add_argument("--model", default=None, help="checkpoint directory")
    g.add_argument("--raw", default=None, help="the text to continue")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--device", default="cpu")
    g.add_argument("--json", action="store_true", help='print {"text": ..., "token_ids": [...]}')
    g.set_defaults(func=cmd_generate)

    x = sub.add_parser("export-hf", help="write a checkpoint's decoder as a Hugging Face directory")
    x.add_argument("--model", required=True)
    x.add_argument("--out", required=True)
    x.set_defaults(func=cmd_export_hf)

    r = data_sub.add_parser("from-rosbag", help="camera frames of a rosbag2 to DIR/images + DIR/data.jsonl")
    r.add_argument("bag", help="rosbag2 directory (sqlite3 or mcap)")
    r.add_argument("--topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    r.add_argument("--out", required=True)
    r.add_argument("--every", type=int, default=1, help="keep every Nth frame")
    r.set_defaults(func=cmd_from_rosbag)

    n = data_sub.add_parser("inspect", help="count what a LLaVA/COCO/VQA/GQA/HF data source yields")
    n.add_argument("path")
    n.add_argument("--format", default="auto", help="auto | llava | coco | vqa | gqa | hf | nanovla")
    n.add_argument("--images", default="", help="image folder (default: beside the file)")
    n.add_argument("--check-images", action="store_true", help="also decode every image (slow)")
    n.set_defaults(func=cmd_inspect)

    y = data_sub.add_parser("to-yolo", help="a `data generate` directory as an ultralytics detection data set")
    y.add_argument("data", help="a `nanovla data generate` directory")
    y.add_argument("--out", required=True)
    y.add_argument("--classes", default="kind", choices=("kind", "color_kind"))
    y.add_argument("--val-fraction", type=float, default=0.1, help="share of rows (the last ones) for val")
    y.set_defaults(func=cmd_to_yolo)
