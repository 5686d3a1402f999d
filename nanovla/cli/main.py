"""The `nanovla` command line.

    nanovla data generate --out DIR --count N --seed S [--split train|eval|heldout]
    nanovla describe IMAGE... [--model DIR] [--backend auto|torch|onnxruntime|tensorrt] [--json]
    nanovla ask IMAGE "QUESTION" [--json]      |  nanovla ask --questions FILE.jsonl
    nanovla eval --data DIR [--model DIR]
    nanovla train --stage STAGE [--field value ...]   |  nanovla train --recipe FILE.toml
    nanovla info [--model DIR]
    nanovla serve [--model DIR] [--backend B] [--host H] [--port P] [--ros-topic T]   (nanovla/serve/)

Bad input is one line on stderr and a non-zero exit, never a traceback (NANOVLA_DEBUG=1 shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .common import CLIError, add_dataclass_args, dataclass_from_args, load_runtime_from_args
from ..training.config import TrainConfig

EXIT_BAD_INPUT = 2


def _emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def _err(msg: str) -> None:
    print(f"nanovla: error: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- commands

def cmd_data_generate(args) -> int:
    import cv2
    import numpy as np

    from ..data.language import caption, sample_questions
    from ..data.scenes import SPLITS, generate, scene_seed

    if args.split not in SPLITS:
        raise CLIError(f"--split must be one of {', '.join(SPLITS)}")
    if args.count < 0:
        raise CLIError("--count must be >= 0")
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    tmp = os.path.join(args.out, "data.jsonl.tmp")
    t0 = time.perf_counter()
    with open(tmp, "w") as f:
        for i in range(args.count):
            image, scene = generate(args.split, args.seed, i)
            rel = f"images/{i:06d}.png"
            if not cv2.imwrite(os.path.join(args.out, rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise CLIError(f"could not write {os.path.join(args.out, rel)}")
            rng = np.random.default_rng(scene_seed(args.split, args.seed, i) ^ 0x5EED)
            row = {"image": rel, "objects": [o.to_json() for o in scene.objects], "caption": caption(scene),
                   "qa": [{k: q[k] for k in ("question", "answer", "type")}
                          for q in sample_questions(scene, rng, args.split, k=args.questions)]}
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, os.path.join(args.out, "data.jsonl"))
    print(f"wrote {args.count} {args.split} scenes to {args.out} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


def _sampling(args) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "seed": args.seed}


def cmd_describe(args) -> int:
    from ..runtime.preprocess import ImageError, load_image

    runtime = load_runtime_from_args(args)
    failures = 0
    for path in args.images:
        try:
            image = load_image(path)
            answer = runtime.describe(image, **_sampling(args))
        except (ImageError, ValueError) as e:
            _err(str(e))
            failures += 1
            continue
        if args.json:
            _emit({"image": path, "description": answer.text, "latency_ms": round(answer.latency_ms, 2)})
        else:
            print(f"{path}: {answer.text}", flush=True)
    return EXIT_BAD_INPUT if failures else 0


def cmd_ask(args) -> int:
    from ..runtime.preprocess import load_image
    from ..model.tokenizer import check_question

    if args.questions:
        if args.image or args.question:
            raise CLIError("give either IMAGE QUESTION or --questions FILE.jsonl, not both")
        return _ask_batch(args)
    if not args.image or args.question is None:
        raise CLIError("ask needs IMAGE and QUESTION (or --questions FILE.jsonl)")
    question = check_question(args.question)
    image = load_image(args.image)
    runtime = load_runtime_from_args(args)
    answer = runtime.ask(image, question, **_sampling(args))
    if args.json:
        _emit({"answer": answer.text, "latency_ms": round(answer.latency_ms, 2)})
    else:
        print(answer.text)
    return 0


def _ask_batch(args) -> int:
    from ..runtime.preprocess import ImageError, load_image
    from ..model.tokenizer import check_question

    if not os.path.isfile(args.questions):
        raise CLIError(f"{args.questions}: no such file")
    base = os.path.dirname(os.path.abspath(args.questions))
    runtime = load_runtime_from_args(args)
    contexts: dict[str, object] = {}  # one encode per image, reused across its questions
    failures = 0
    with open(args.questions, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError as e:
            raise CLIError(f"{args.questions}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{args.questions}:{n}"
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(
                    row.get("question"), str):
                raise ValueError('expected {"image": PATH, "question": TEXT}')
            question = check_question(row["question"])
            path = os.path.join(base, row["image"])
            encode_ms = 0.0
            if path not in contexts:
                contexts.clear()  # keep one image context: consecutive lines usually share it
                t0 = time.perf_counter()
                contexts[path] = runtime.encode(load_image(path))
                encode_ms = (time.perf_counter() - t0) * 1000
            answer = runtime.generate(contexts[path], question, **_sampling(args))
        except json.JSONDecodeError as e:
            _err(f"{where}: not JSON ({e.msg})")
            failures += 1
            continue
        except (ImageError, ValueError) as e:
            _err(f"{where}: {e}")
            failures += 1
            continue
        _emit({**row, "answer": answer.text, "latency_ms": round(answer.latency_ms + encode_ms, 2)})
    return EXIT_BAD_INPUT if failures else 0


def cmd_eval(args) -> int:
    from ..evaluation.scenes import evaluate
    from ..runtime.preprocess import ImageError, load_image

    path = os.path.join(args.data, "data.jsonl")
    try:  # LLaVA/COCO/VQA/GQA/HF data sets and rosbag frames are scored by cli_hf
        from .hub import cmd_eval_format, wants_format_eval
    except ImportError:
        wants_format_eval = None
    if wants_format_eval is not None and wants_format_eval(args):
        return cmd_eval_format(args)
    if not os.path.isfile(path):
        raise CLIError(f"{args.data}: no data.jsonl (make one with `nanovla data generate`)")
    runtime = load_runtime_from_args(args)
    skipped = []

    def rows():
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if args.limit and n > args.limit:
                    return
                try:
                    row = json.loads(line)
                    row["image"] = load_image(os.path.join(args.data, row["image"]))
                except (json.JSONDecodeError, KeyError, ImageError) as e:
                    _err(f"{path}:{n}: skipped ({e})")
                    skipped.append(n)
                    continue
                yield row

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else None
    metrics = evaluate(runtime, rows(), log=log)
    metrics.update({"data": args.data, "model": runtime.model_path, "backend": runtime.backend,
                    "skipped_rows": len(skipped)})
    if not args.examples:
        metrics.pop("wrong_examples")
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


def cmd_train(args) -> int:
    from ..model.config import ModelConfig
    from ..training.train import train

    if args.recipe:
        from ..training.recipe import run_recipe

        run_recipe(args.recipe, only=args.only)
        return 0
    if not args.stage:
        raise CLIError("train needs --stage vision|text|align|sft|linearize or --recipe FILE.toml")
    cfg = dataclass_from_args(TrainConfig, args)
    train(cfg, ModelConfig())
    return 0


def cmd_info(args) -> int:
    from ..model.checkpoint_files import CheckpointError, read_config, read_metrics
    from ..runtime.base import resolve_model

    path = resolve_model(args.model)
    try:
        config = read_config(path)
    except CheckpointError:
        bundle = os.path.join(path, "bundle.json")
        if os.path.isfile(bundle):
            with open(bundle) as f:
                print(json.dumps(json.load(f), indent=2))
            return 0
        raise
    print(json.dumps({"path": path, "config": config, "metrics": read_metrics(path)}, indent=2))
    return 0


def cmd_probe(args) -> int:
    from ..model.checkpoint import load_checkpoint
    from ..model.paths import default_model_dir
    from ..evaluation.probe import format_table, probe

    if args.scenes < 10:
        raise CLIError(f"--scenes must be at least 10, got {args.scenes}")
    path = args.model or default_model_dir()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_checkpoint(path)
    result = probe(model, tokenizer, scenes=args.scenes, split=args.split, seed=args.seed,
                   answers=not args.no_answers, log=lambda m: print(m, file=sys.stderr, flush=True))
    result["model"] = path
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def cmd_serve(args) -> int:
    try:
        from ..serve.app import serve
    except ImportError as e:
        raise CLIError(f"serve needs the [serve] extra ({e}); pip install -e '.[serve]'") from None
    if args.ros_topic:  # before the model loads: a missing rclpy is a one-line error at once
        try:
            from ..serve import ros_camera  # noqa: F401
        except ImportError as e:
            raise CLIError(str(e)) from None
    if not 0 < args.port < 65536 or args.queue_size < 1 or args.max_body_mb <= 0 or args.max_new_tokens < 1:
        raise CLIError("--port must be 1..65535, and --queue-size, --max-body-mb, --max-new-tokens positive")
    runtime = load_runtime_from_args(args)
    serve(runtime, args.host, args.port, ros_topic=args.ros_topic, queue_size=args.queue_size,
          max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_tokens=args.max_new_tokens,
          log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from ..runtime.base import BACKEND_CHOICES

    parser = argparse.ArgumentParser(prog="nanovla", description="edge vision-language runtime for robots")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="data_command", required=True)
    gen = data.add_parser("generate", help="render tabletop scenes to DIR/images + DIR/data.jsonl")
    gen.add_argument("--out", required=True)
    gen.add_argument("--count", type=int, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--split", default="train", help="train | eval | heldout")
    gen.add_argument("--questions", type=int, default=8, help="questions per image")
    gen.set_defaults(func=cmd_data_generate)

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
    d.set_defaults(func=cmd_describe)

    a = sub.add_parser("ask", help="answer a question about an image")
    a.add_argument("image", nargs="?")
    a.add_argument("question", nargs="?")
    a.add_argument("--questions", help="JSONL of {image, question}; paths relative to the file")
    a.add_argument("--json", action="store_true")
    runtime_args(a)
    a.set_defaults(func=cmd_ask)

    e = sub.add_parser("eval", help="score a model on a data directory; prints JSON")
    e.add_argument("--data", required=True)
    e.add_argument("--limit", type=int, default=0, help="first N rows only")
    e.add_argument("--out", help="also write the JSON here")
    e.add_argument("--examples", action="store_true", help="include some wrong answers")
    e.add_argument("--verbose", action="store_true")
    runtime_args(e)
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("train", help="run a training stage or a recipe")
    t.add_argument("--recipe", help="a recipe .toml running several stages")
    t.add_argument("--only", help="with --recipe: run only this stage name")
    add_dataclass_args(t, TrainConfig)  # torch-free: the flags exist even where training cannot run
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("serve", help="HTTP server: OpenAI-compatible chat API and a web page at /")
    model_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 = every interface)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--ros-topic", default="", help="show this camera topic live (needs rclpy; a topic ending "
                                                   "in /compressed is read as sensor_msgs/CompressedImage)")
    s.add_argument("--queue-size", type=int, default=64, help="requests waiting for the model (more get 503)")
    s.add_argument("--max-body-mb", type=float, default=8.0, help="larger request bodies get 413")
    s.add_argument("--max-new-tokens", type=int, default=64, help="answer length when a request has no max_tokens")
    s.set_defaults(func=cmd_serve)

    pr = sub.add_parser("probe", help="linear probes of a checkpoint's image tokens beside its answers per type")
    pr.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    pr.add_argument("--scenes", type=int, default=400, help="scenes; probes fit on 70%%, score on the rest")
    pr.add_argument("--split", default="eval", choices=("train", "eval", "heldout"))
    pr.add_argument("--seed", type=int, default=2024)
    pr.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    pr.add_argument("--no-answers", action="store_true", help="probes only, skip the model's answers")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_probe)

    i = sub.add_parser("info", help="print a model's config and metrics")
    i.add_argument("--model", default=None)
    i.set_defaults(func=cmd_info)

    try:  # export lives in its own module (and needs the [export] extra)
        from .export import add_export_parser

        add_export_parser(sub)
    except ImportError:
        pass
    try:  # pretrained parts and data sets from disk: init, generate, data from-rosbag, ...
        from .hub import add_parsers

        add_parsers(sub, data)
    except ImportError:
        pass
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # one line for the user; the traceback on request
        if os.environ.get("NANOVLA_DEBUG"):
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        _err(message)
        return EXIT_BAD_INPUT if isinstance(e, (CLIError, ValueError, OSError)) else 1


if __name__ == "__main__":
    sys.exit(main())
