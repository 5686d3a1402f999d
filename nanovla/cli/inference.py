"""`nanovla describe | ask | eval | info`: what a bundle-only robot runs, so nothing here imports
torch (the torch backend, where chosen, is loaded by name by nanovla.runtime)."""

from __future__ import annotations

import json
import os
import sys
import time

from ..data.formats import load_source
from ..evaluation.formats import evaluate_source
from ..evaluation.scenes import evaluate
from ..model.checkpoint_files import CheckpointError, read_config, read_metrics
from ..model.tokenizer import check_question
from ..runtime.base import resolve_model
from ..runtime.preprocess import ImageError, load_image
from .common import EXIT_BAD_INPUT, CLIError, emit, err, load_runtime_from_args, log


def _sampling(args) -> dict:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
            "top_p": args.top_p, "seed": args.seed}


def cmd_describe(args) -> int:
    runtime = load_runtime_from_args(args)
    failures = 0
    for path in args.images:
        try:
            image = load_image(path)
            answer = runtime.describe(image, **_sampling(args))
        except (ImageError, ValueError) as e:
            err(str(e))
            failures += 1
            continue
        if args.json:
            emit({"image": path, "description": answer.text, "latency_ms": round(answer.latency_ms, 2)})
        else:
            print(f"{path}: {answer.text}", flush=True)
    return EXIT_BAD_INPUT if failures else 0


def cmd_ask(args) -> int:
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
        emit({"answer": answer.text, "latency_ms": round(answer.latency_ms, 2)})
    else:
        print(answer.text)
    return 0


def _ask_batch(args) -> int:
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
            err(f"{where}: not JSON ({e.msg})")
            failures += 1
            continue
        except (ImageError, ValueError) as e:
            err(f"{where}: {e}")
            failures += 1
            continue
        emit({**row, "answer": answer.text, "latency_ms": round(answer.latency_ms + encode_ms, 2)})
    return EXIT_BAD_INPUT if failures else 0


def cmd_eval(args) -> int:
    path = os.path.join(args.data, "data.jsonl")
    if wants_format_eval(args):  # LLaVA/COCO/VQA/GQA/HF data sets and rosbag frames
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
                    err(f"{path}:{n}: skipped ({e})")
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
    source = load_source(args.data, args.format or "auto", images=args.images, log=log)
    runtime = load_runtime_from_args(args)
    metrics = evaluate_source(runtime, source, limit=args.limit, log=log if args.verbose else None,
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
        log(f"wrote {args.out}")
    return 0


def cmd_info(args) -> int:
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
