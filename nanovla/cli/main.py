"""The `nanovla` command line.

    nanovla data generate --out DIR --count N --seed S [--split train|eval|heldout]
    nanovla describe IMAGE... [--model DIR] [--backend auto|torch|onnxruntime|tensorrt] [--json]
    nanovla ask IMAGE "QUESTION" [--json]      |  nanovla ask --questions FILE.jsonl
    nanovla eval --data DIR [--model DIR]
    nanovla train --stage STAGE [--field value ...]   |  nanovla train --recipe FILE.toml
    nanovla info [--model DIR]
    nanovla serve [--model DIR] [--backend B] [--host H] [--port P] [--ros-topic T]   (nanovla/serve/)
    nanovla export [MODEL] --to FORMAT [--out DIR]    |  nanovla export-hf --model CKPT --out HF_DIR
    nanovla init --encoder ENC --decoder HF_DIR --out CKPT  |  nanovla generate --model CKPT --raw TEXT
    nanovla data from-rosbag BAG --topic T --out DIR  |  data inspect PATH  |  data to-yolo DIR --out DIR

This module builds the whole argparse tree (no torch: every flag comes from torch-free modules) and
runs a command by importing only the command module that COMMANDS names for it: `nanovla describe`
loads cli/inference.py and never the torch-importing training.py, hub.py or export.py. Each
command module imports what it needs at its top.

Bad input is one line on stderr and a non-zero exit, never a traceback (NANOVLA_DEBUG=1 shows it).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys

from ..export.formats import FORMATS, ExportOptions, formats_help, option_help
from ..runtime.base import BACKEND_CHOICES
from ..training.config import TrainConfig
from .common import EXIT_BAD_INPUT, CLIError, add_dataclass_args, err

# subcommand -> the module of nanovla/cli/ that runs it (its cmd_* functions); imported only when
# that subcommand runs. torch: training, hub, export (and inference with --backend torch, by name).
COMMANDS = {
    "data": "data",  # data generate | from-rosbag | inspect | to-yolo
    "describe": "inference",
    "ask": "inference",
    "eval": "inference",
    "info": "inference",
    "train": "training",
    "probe": "training",
    "init": "hub",
    "generate": "hub",
    "export-hf": "hub",
    "export": "export",
    "serve": "serve",
}
# a command module whose optional dependencies do not import: this one line instead (exit 2)
MISSING_EXTRA = {
    "serve": "serve needs the [serve] extra ({error}); pip install -e '.[serve]'",
    "export": "export needs PyTorch, onnx and onnxruntime (pip install 'nanovla[export]'): {error}",
}


def command_module(command: str):
    """The module that runs `command` (nanovla.cli.<COMMANDS[command]>), imported now."""
    name = COMMANDS[command]
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError as e:
        if name in MISSING_EXTRA:
            raise CLIError(MISSING_EXTRA[name].format(error=e)) from None
        raise


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanovla", description="edge vision-language runtime for robots")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="data_command", required=True)
    gen = data.add_parser("generate", help="render tabletop scenes to DIR/images + DIR/data.jsonl")
    gen.add_argument("--out", required=True)
    gen.add_argument("--count", type=int, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--split", default="train", help="train | eval | heldout")
    gen.add_argument("--questions", type=int, default=8, help="questions per image")
    gen.set_defaults(handler="cmd_generate")

    def model_args(p):
        p.add_argument("--model", default=None, help="checkpoint or bundle directory (default: the shipped model)")
        p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                       help="auto (the default): onnxruntime for a bundle (with no --model: the shipped int8 "
                            "bundle, where onnxruntime imports), torch for a checkpoint")
        p.add_argument("--device", default="cpu", help="cpu | cuda")
        p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = backend default)")

    def runtime_args(p):
        model_args(p)
        p.add_argument("--max-new-tokens", type=int, default=64)
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        p.add_argument("--top-k", type=int, default=0)
        p.add_argument("--top-p", type=float, default=1.0)
        p.add_argument("--seed", type=int, default=None, help="sampling seed")

    d = sub.add_parser("describe", help="describe images")
    d.add_argument("images", nargs="+")
    d.add_argument("--json", action="store_true", help="one JSON line per image")
    runtime_args(d)
    d.set_defaults(handler="cmd_describe")

    a = sub.add_parser("ask", help="answer a question about an image")
    a.add_argument("image", nargs="?")
    a.add_argument("question", nargs="?")
    a.add_argument("--questions", help="JSONL of {image, question}; paths relative to the file")
    a.add_argument("--json", action="store_true")
    runtime_args(a)
    a.set_defaults(handler="cmd_ask")

    e = sub.add_parser("eval", help="score a model on a data directory; prints JSON")
    e.add_argument("--data", required=True)
    e.add_argument("--limit", type=int, default=0, help="first N rows only")
    e.add_argument("--out", help="also write the JSON here")
    e.add_argument("--examples", action="store_true", help="include some wrong answers")
    e.add_argument("--verbose", action="store_true")
    e.add_argument("--format", default="", help="llava | coco | vqa | gqa | hf | nanovla (default: a nanovla "
                                                "data.jsonl directory as before, else detected)")
    e.add_argument("--images", default="", help="image folder of a LLaVA/COCO/VQA/GQA data set")
    runtime_args(e)
    e.set_defaults(handler="cmd_eval")

    t = sub.add_parser("train", help="run a training stage or a recipe")
    t.add_argument("--recipe", help="a recipe .toml running several stages")
    t.add_argument("--only", help="with --recipe: run only this stage name")
    add_dataclass_args(t, TrainConfig)  # torch-free: the flags exist even where training cannot run
    t.set_defaults(handler="cmd_train")

    s = sub.add_parser("serve", help="HTTP server: OpenAI-compatible chat API and a web page at /")
    model_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 = every interface)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--ros-topic", default="", help="show this camera topic live (needs rclpy; a topic ending "
                                                   "in /compressed is read as sensor_msgs/CompressedImage)")
    s.add_argument("--queue-size", type=int, default=64, help="requests waiting for the model (more get 503)")
    s.add_argument("--max-body-mb", type=float, default=8.0, help="larger request bodies get 413")
    s.add_argument("--max-new-tokens", type=int, default=64, help="answer length when a request has no max_tokens")
    s.set_defaults(handler="cmd_serve")

    pr = sub.add_parser("probe", help="linear probes of a checkpoint's image tokens beside its answers per type")
    pr.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    pr.add_argument("--scenes", type=int, default=400, help="scenes; probes fit on 70%%, score on the rest")
    pr.add_argument("--split", default="eval", choices=("train", "eval", "heldout"))
    pr.add_argument("--seed", type=int, default=2024)
    pr.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    pr.add_argument("--no-answers", action="store_true", help="probes only, skip the model's answers")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(handler="cmd_probe")

    i = sub.add_parser("info", help="print a model's config and metrics")
    i.add_argument("--model", default=None)
    i.set_defaults(handler="cmd_info")

    add_export_parser(sub)
    add_hub_parsers(sub)
    add_data_parsers(data)
    return parser


def add_hub_parsers(sub) -> None:
    """Pretrained parts: init, generate, export-hf (cli/hub.py)."""
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
    i.set_defaults(handler="cmd_init")

    g = sub.add_parser("generate", help="plain text continuation (no chat template)")
    g.add_argument("--model", default=None, help="checkpoint directory")
    g.add_argument("--raw", default=None, help="the text to continue")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--device", default="cpu")
    g.add_argument("--json", action="store_true", help='print {"text": ..., "token_ids": [...]}')
    g.set_defaults(handler="cmd_generate")

    x = sub.add_parser("export-hf", help="write a checkpoint's decoder as a Hugging Face directory")
    x.add_argument("--model", required=True)
    x.add_argument("--out", required=True)
    x.set_defaults(handler="cmd_export_hf")


def add_data_parsers(data) -> None:
    """`nanovla data` beyond generate: from-rosbag, inspect, to-yolo (cli/data.py)."""
    r = data.add_parser("from-rosbag", help="camera frames of a rosbag2 to DIR/images + DIR/data.jsonl")
    r.add_argument("bag", help="rosbag2 directory (sqlite3 or mcap)")
    r.add_argument("--topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    r.add_argument("--out", required=True)
    r.add_argument("--every", type=int, default=1, help="keep every Nth frame")
    r.set_defaults(handler="cmd_from_rosbag")

    n = data.add_parser("inspect", help="count what a LLaVA/COCO/VQA/GQA/HF data source yields")
    n.add_argument("path")
    n.add_argument("--format", default="auto", help="auto | llava | coco | vqa | gqa | hf | nanovla")
    n.add_argument("--images", default="", help="image folder (default: beside the file)")
    n.add_argument("--check-images", action="store_true", help="also decode every image (slow)")
    n.set_defaults(handler="cmd_inspect")

    y = data.add_parser("to-yolo", help="a `data generate` directory as an ultralytics detection data set")
    y.add_argument("data", help="a `nanovla data generate` directory")
    y.add_argument("--out", required=True)
    y.add_argument("--classes", default="kind", choices=("kind", "color_kind"))
    y.add_argument("--val-fraction", type=float, default=0.1, help="share of rows (the last ones) for val")
    y.set_defaults(handler="cmd_to_yolo")


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to a bundle (ONNX fp32/int8/fp16, TensorRT)",
        description="Export a checkpoint to a bundle directory: vision, prefill and decode graphs, the tokenizer "
                    "and bundle.json (I/O, preprocessing, precision, parity measured against PyTorch).",
        epilog=formats_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, help="checkpoint directory (default: the shipped model)")
    p.add_argument("--to", required=True, choices=list(FORMATS), help="export format (see below)")
    p.add_argument("--out", default=None, help="bundle directory to write (default: bundles/<model>-<format>)")
    descriptions = option_help()
    add_dataclass_args(p, ExportOptions, switches=True, describe=lambda f: _field_help(f, descriptions.get(f.name, "")))
    p.add_argument("--json", action="store_true", help="print bundle.json's parity section as JSON")
    p.set_defaults(handler="cmd_export")
    return p


def _field_help(field: dataclasses.Field, description: str) -> str:
    formats = [f.name for f in FORMATS.values() if field.name in f.options]
    where = f" [{', '.join(formats)} only]" if formats else ""
    return f"{description} (default {field.default!r}){where}"


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        module = command_module(args.command)
        return int(getattr(module, args.handler)(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # one line for the user; the traceback on request
        if os.environ.get("NANOVLA_DEBUG"):
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        err(message)
        return EXIT_BAD_INPUT if isinstance(e, (CLIError, ValueError, OSError)) else 1


if __name__ == "__main__":
    sys.exit(main())
