"""Every available backend and precision on the same frames and prompts: vision encode, time to
first token, time per output token, end-to-end describe (p50/p95 after warm-up), tokens/s, peak
resident memory, model size on disk, eval accuracy; plus the machine's memory bandwidth
(STREAM-like copy) and matmul peak, and each stage's share of its roofline floor:

    decode step floor = bytes read per step (weights + KV cache) / memory bandwidth (DRAM; and
                        the copy bandwidth at that many bytes, since a small model stays in cache)
    vision floor      = vision FLOPs / matmul peak (fp32, or int8 for the int8 graph)

    python benchmarks/bench_runtime.py --model runs/default/sft [--threads 1] [--frames 50]
    python benchmarks/bench_runtime.py --cameras 1,2,4     # only: N cameras in one pass (describe_batch)

Bundles are exported on demand into --bundles (fp32, int8, fp16). Each backend runs in its own
process so its peak resident memory is its own. Prints a table; writes JSON (machine, versions,
settings, results) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

VARIANTS = {  # name -> (backend, export format or None for the checkpoint)
    "torch-fp32": ("torch", None),
    "ort-fp32": ("onnxruntime", "onnx"),
    "ort-int8": ("onnxruntime", "onnx-int8"),
    "ort-fp16": ("onnxruntime", "onnx-fp16"),
}


# ----------------------------------------------------------------------------- machine

def copy_bandwidth_gbs(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """STREAM 'copy' (b[:] = a, counted as 2 x bytes moved). At 256 MB it is DRAM bandwidth; at a
    model's weight size it is the bandwidth a decode step can get when its weights stay in cache."""
    a = np.ones(max(1, nbytes // 8), np.float64)
    b = np.empty_like(a)
    loops = max(1, (64 << 20) // a.nbytes)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            np.copyto(b, a)
        best = min(best, (time.perf_counter() - t0) / loops)
    return 2 * a.nbytes / best / 1e9


def matmul_peak_gflops(threads: int, n: int = 512, int8: bool = False, repeats: int = 20) -> float:
    """Best MatMul (fp32) or MatMulInteger (int8) throughput of onnxruntime's kernels (MLAS), the
    kernels the exported graphs run on, at the benchmark's thread count."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if int8:
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        feed = {"a": np.random.randint(0, 255, (n, n), dtype=np.uint8),
                "b": np.random.randint(-127, 127, (n, n), dtype=np.int8)}
    else:
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        feed = {"a": np.random.rand(n, n).astype(np.float32), "b": np.random.rand(n, n).astype(np.float32)}
    model = helper.make_model(helper.make_graph([node], "mm", [a, b], [y]), opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, feed)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
            "load_average_at_start": load}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("nanovla", "torch", "onnxruntime", "onnx", "numpy", "tensorrt"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------- one backend (worker process)

def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    from the parent across fork+exec, so a worker would report the exporting parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _weight_bytes_per_step(decode_graph: str) -> int:
    """Initializer bytes a decode step reads: everything but Gather tables (only one row is read)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(decode_graph)
    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.name not in gathered))


def kv_bytes_per_step(n_layer: int, n_kv_head: int, head_dim: int, prefix: int, mean_tokens: float,
                      itemsize: int) -> float:
    """KV cache bytes the average describe step reads: it attends the prefix, the question (~6
    tokens) and half the answer; K and V, every layer."""
    return 2 * n_layer * n_kv_head * head_dim * (prefix + 6 + mean_tokens / 2) * itemsize


def timed_describe(runtime, frame, max_new_tokens: int):
    """(milliseconds, context, answer) of one `describe`: encode the frame, then generate."""
    from nanovla.runtime.prompts import DESCRIBE_PROMPT

    t0 = time.perf_counter()
    context = runtime.encode(frame)
    answer = runtime.generate(context, DESCRIBE_PROMPT, max_new_tokens=max_new_tokens)
    return (time.perf_counter() - t0) * 1000, context, answer


def run_worker(args) -> dict:
    from nanovla.data.scenes import generate
    from nanovla.evaluation.scenes import evaluate, generated_rows
    from nanovla.runtime.preprocess import preprocess
    from nanovla.runtime import load_runtime

    backend, path = args.worker, args.worker_model
    options = {"provider": args.provider} if args.provider and backend == "onnxruntime" else {}
    runtime = load_runtime(path, backend=backend, device=args.device, threads=args.threads, **options)
    frames = [generate("eval", args.seed + 1, i)[0] for i in range(args.frames + args.warmup)]
    vision_ms, ttft, tpot, e2e, tokens, gen_ms = [], [], [], [], [], []
    for i, frame in enumerate(frames):
        total, context, answer = timed_describe(runtime, frame, args.max_new_tokens)
        if i < args.warmup:
            continue
        if backend == "torch":  # vision alone, timed separately (the torch context times vision + prefill)
            import torch

            pixels = torch.from_numpy(preprocess(frame, runtime.image_height, runtime.image_width))
            with torch.inference_mode():
                t1 = time.perf_counter()
                runtime.model.encode_image(pixels.to(args.device))
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                vision_ms.append((time.perf_counter() - t1) * 1000)
        else:
            vision_ms.append(context.vision_ms)
        n = len(answer.token_ids)
        e2e.append(total)
        ttft.append(context.encode_ms + answer.first_token_ms)
        tokens.append(n)
        gen_ms.append(answer.latency_ms)
        if n > 1:
            tpot.append((answer.latency_ms - answer.first_token_ms) / (n - 1))
    accuracy = {}
    if args.eval_scenes:
        metrics = evaluate(runtime, generated_rows("eval", args.seed, args.eval_scenes, questions=args.eval_questions))
        accuracy = {"exact_match": metrics["exact_match"], "caption_f1": metrics["caption"]["f1"],
                    "questions": metrics["questions"], "images": metrics["images"]}
    if backend == "torch":
        size = os.path.getsize(os.path.join(path, "model.safetensors"))
        decoder = runtime.model.decoder
        weight_bytes = sum(p.numel() * p.element_size() for n, p in decoder.named_parameters() if "embed" not in n)
        weight_bytes += decoder.lm_head.weight.numel() * decoder.lm_head.weight.element_size()
        kv_bytes = 4
    else:
        with open(os.path.join(path, "bundle.json")) as f:
            bundle = json.load(f)
        size = sum(g["bytes"] for g in bundle["graphs"].values())
        weight_bytes = _weight_bytes_per_step(os.path.join(path, bundle["graphs"]["decode"]["file"]))
        kv_bytes = np.dtype(bundle["graphs"]["decode"]["inputs"][2]["dtype"]).itemsize
    m = runtime.model.cfg.decoder if backend == "torch" else None
    shape = ((m.n_layer, m.n_kv_head, m.n_embd // m.n_head) if m else
             (runtime.n_layer, runtime.n_kv_head, runtime.head_dim))
    mean_tokens = float(np.mean(tokens)) if tokens else 0.0
    prefix = (runtime.image_tokens if backend != "torch" else runtime.model.cfg.image_tokens) + 2
    kv_per_step = kv_bytes_per_step(*shape, prefix, mean_tokens, kv_bytes)
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    return {
        "vision_ms_p50": pct(vision_ms, 50), "ttft_ms_p50": pct(ttft, 50), "tpot_ms_p50": pct(tpot, 50),
        "describe_ms_p50": pct(e2e, 50), "describe_ms_p95": pct(e2e, 95),
        "tokens_per_s": float(np.sum(tokens) / (np.sum(gen_ms) / 1000)) if gen_ms else 0.0,
        "decode_tokens_per_s": 1000 / pct(tpot, 50) if tpot else 0.0,
        "mean_output_tokens": mean_tokens, "frames": len(e2e),
        "peak_rss_mb": peak_rss_mb(),
        "model_bytes": size, "decode_weight_bytes": int(weight_bytes), "decode_kv_bytes": int(kv_per_step),
        "accuracy": accuracy,
    }


# ----------------------------------------------------------------------------- driver

def ensure_bundle(checkpoint: str, fmt: str, directory: str, args) -> str:
    from nanovla.runtime.bundle import is_bundle, read_bundle, weights_digest

    out = os.path.join(directory, fmt)
    if is_bundle(out):
        producer = read_bundle(out, check_digests=False)["producer"]
        # exported from these very weights: a bundle of older weights (or another checkpoint) is stale
        if producer.get("source_weights_sha256") == weights_digest(checkpoint):
            return out
    from nanovla.export.exporter import export_bundle
    from nanovla.export.formats import ExportOptions

    print(f"bench: exporting {fmt} bundle to {out}", file=sys.stderr, flush=True)
    export_bundle(checkpoint, fmt, out, ExportOptions(parity_scenes=args.parity_scenes, allow_drift=True,
                                                      threads=args.threads),
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    return out


def vision_flops(bundle: str) -> int:
    from nanovla.export.quantize import graph_flops

    return graph_flops(os.path.join(bundle, "vision.onnx"))


def run_variant(name: str, backend: str, path: str, args, roof: dict, flops: int | None, int8: bool = False,
                provider: str = "") -> dict | None:
    """One backend in its own process (its own peak memory); adds the roofline shares."""
    print(f"bench: {name} ({args.frames} frames + {args.warmup} warm-up, eval {args.eval_scenes} scenes)",
          file=sys.stderr, flush=True)
    cmd = [sys.executable, os.path.join(HERE, "bench_runtime.py"), "--worker", backend, "--worker-model", path,
           "--threads", str(args.threads), "--device", args.device, "--frames", str(args.frames),
           "--warmup", str(args.warmup), "--max-new-tokens", str(args.max_new_tokens),
           "--eval-scenes", str(args.eval_scenes), "--eval-questions", str(args.eval_questions),
           "--seed", str(args.seed), "--provider", provider]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        print(f"bench: {name} failed: {last}", file=sys.stderr)
        return None
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    if roof.get("memory_bandwidth_gbs"):
        step_bytes = r["decode_weight_bytes"] + r["decode_kv_bytes"]
        r["decode_floor_ms"] = step_bytes / (roof["memory_bandwidth_gbs"] * 1e9) * 1000
        r["decode_vs_floor"] = r["tpot_ms_p50"] / r["decode_floor_ms"]
        # a small decoder's weights fit in the last-level cache: the floor at cache bandwidth
        r["bandwidth_at_step_bytes_gbs"] = copy_bandwidth_gbs(step_bytes // 2)  # copy moves 2x its array
        r["decode_cache_floor_ms"] = step_bytes / (r["bandwidth_at_step_bytes_gbs"] * 1e9) * 1000
        r["decode_vs_cache_floor"] = r["tpot_ms_p50"] / r["decode_cache_floor_ms"]
    if flops and roof.get("matmul_fp32_gflops"):
        peak = roof["matmul_int8_gops"] if int8 else roof["matmul_fp32_gflops"]
        r["vision_flops"] = flops
        r["vision_floor_ms"] = flops / (peak * 1e9) * 1000
        r["vision_vs_floor"] = r["vision_ms_p50"] / r["vision_floor_ms"]
    return r


def multi_camera(args) -> dict:
    """N cameras described in one pass (Runtime.describe_batch) with the default backend (auto:
    the shipped int8 bundle on onnxruntime) or --model, for each N in --cameras and each
    batch_decode mode, against N describe() calls one after another. A pass's latency is every
    one of its frames' latency (they come out together); frames/s = N * passes / time."""
    from nanovla.data.scenes import generate
    from nanovla.runtime import load_runtime

    runtime = load_runtime(args.model, backend="auto", device=args.device, threads=args.threads)
    counts = [int(n) for n in args.cameras.split(",")]
    frames = [generate("eval", args.seed + 7, i)[0] for i in range(max(counts) * (args.passes + args.warmup))]
    modes = ["one-by-one"] + [m for m in ("auto", "always") if m == "auto" or runtime.backend != "torch"]
    rows = []
    for n in counts:
        for mode in modes:
            runtime.batch_decode = "auto" if mode == "one-by-one" else mode
            latencies, equal, total = [], 0, 0
            for k in range(args.passes + args.warmup):
                batch = frames[k * n:(k + 1) * n]
                t0 = time.perf_counter()
                if mode == "one-by-one":
                    texts = [runtime.describe(f, max_new_tokens=args.max_new_tokens).text for f in batch]
                else:
                    texts = [a.text for a in runtime.describe_batch(batch, max_new_tokens=args.max_new_tokens)]
                if k >= args.warmup:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    alone = texts if mode == "one-by-one" else \
                        [runtime.describe(f, max_new_tokens=args.max_new_tokens).text for f in batch]  # not timed
                    equal += sum(a == b for a, b in zip(texts, alone))
                    total += n
            elapsed = sum(latencies) / 1000  # the timed passes only
            batched = runtime.decodes_rows_together(n) if mode != "one-by-one" and hasattr(
                runtime, "decodes_rows_together") else False
            rows.append({"cameras": n, "mode": mode, "decoder_batched": batched,
                         "frames_per_s": n * len(latencies) / elapsed,
                         "p50_ms": float(np.percentile(latencies, 50)), "p95_ms": float(np.percentile(latencies, 95)),
                         "answers_equal_one_by_one": f"{equal}/{total}"})
    runtime.close()
    return {"machine": machine(), "versions": versions(), "backend": runtime.backend, "model": runtime.model_path,
            "settings": {"threads": args.threads, "passes": args.passes, "warmup": args.warmup,
                         "max_new_tokens": args.max_new_tokens}, "multi_camera": rows}


def print_multi_camera(report: dict) -> None:
    print(f"{report['backend']} {report['model']} ({report['settings']['threads']} thread(s), "
          f"{report['settings']['passes']} passes per row)")
    print("| cameras | pass | decoder batched | frames/s | p50 latency (ms) | p95 (ms) | answers = one-by-one |")
    print("|---|---|---|---|---|---|---|")
    for r in report["multi_camera"]:
        label = {"one-by-one": "N describe() calls", "auto": "describe_batch, batch_decode auto",
                 "always": "describe_batch, batch_decode always"}[r["mode"]]
        print(f"| {r['cameras']} | {label} | {'yes' if r['decoder_batched'] else 'no'} | {r['frames_per_s']:.1f} | "
              f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['answers_equal_one_by_one']} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=False, help="checkpoint directory (default: the shipped model)")
    p.add_argument("--bundles", default="runs/bench_bundles", help="where bundles are exported / reused")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for every backend")
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=int, default=50, help="timed frames (after warm-up)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--eval-scenes", type=int, default=20, help="eval scenes for accuracy (0 = skip)")
    p.add_argument("--eval-questions", type=int, default=4)
    p.add_argument("--parity-scenes", type=int, default=20, help="parity scenes when exporting a bundle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON results (default: benchmarks/results/runtime-<host>.json)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-model", help=argparse.SUPPRESS)
    p.add_argument("--provider", default="", help=argparse.SUPPRESS)
    p.add_argument("--cameras", default="", help="only the multi-camera table: N frames per pass, e.g. 1,2,4 "
                                                "(default backend, or --model)")
    p.add_argument("--passes", type=int, default=20, help="--cameras: timed passes per row")
    args = p.parse_args(argv)
    if args.cameras:
        report = multi_camera(args)
        print_multi_camera(report)
        out = args.out or os.path.join(HERE, "results", f"multi-camera-{platform.node()}.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {out}")
        return 0
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0

    from nanovla.runtime.base import resolve_model

    checkpoint = resolve_model(args.model)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        print(f"bench_runtime: unknown variants {unknown}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    paths = {}
    for name in names:
        backend, fmt = VARIANTS[name]
        paths[name] = checkpoint if fmt is None else ensure_bundle(checkpoint, fmt, args.bundles, args)
    print("bench: measuring memory bandwidth and matmul peak", file=sys.stderr, flush=True)
    roof = {"memory_bandwidth_gbs": copy_bandwidth_gbs(),
            "matmul_fp32_gflops": matmul_peak_gflops(args.threads),
            "matmul_int8_gops": matmul_peak_gflops(args.threads, int8=True)}
    flops_bundle = paths.get("ort-fp32") or next((v for k, v in paths.items() if k != "torch-fp32"), None)
    flops = vision_flops(flops_bundle) if flops_bundle else None
    results = {}
    for name in names:
        r = run_variant(name, VARIANTS[name][0], paths[name], args, roof, flops,
                        int8=name == "ort-int8")
        if r is not None:
            results[name] = r
    if "torch-fp32" in results:
        base = results["torch-fp32"]["describe_ms_p50"]
        for r in results.values():
            r["speedup_vs_torch_describe_p50"] = base / r["describe_ms_p50"]
    report = {"machine": machine(), "versions": versions(), "roofline": roof,
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("worker")} | {"model": checkpoint,
                                                                                                 "bundles": paths},
              "results": results, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = args.out or os.path.join(HERE, "results", f"runtime-{platform.node() or 'host'}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print_table(report)
    print(f"\nwrote {out}")
    return 0


def print_table(report: dict) -> None:
    roof = report["roofline"]
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores; threads "
          f"{report['settings']['threads']}; bandwidth {roof['memory_bandwidth_gbs']:.1f} GB/s, matmul fp32 "
          f"{roof['matmul_fp32_gflops']:.0f} GFLOP/s, int8 {roof['matmul_int8_gops']:.0f} GOP/s (onnxruntime MLAS)")
    head = ("variant", "vision ms", "TTFT ms", "TPOT ms", "describe p50", "p95", "tok/s", "RSS MB", "size MB",
            "exact", "capF1", "x torch", "decode/DRAM floor", "decode/cache floor", "vision/floor")
    rows = []
    for name, r in report["results"].items():
        acc = r.get("accuracy") or {}
        rows.append((name, f"{r['vision_ms_p50']:.1f}", f"{r['ttft_ms_p50']:.1f}", f"{r['tpot_ms_p50']:.2f}",
                     f"{r['describe_ms_p50']:.1f}", f"{r['describe_ms_p95']:.1f}", f"{r['tokens_per_s']:.0f}",
                     f"{r['peak_rss_mb']:.0f}", f"{r['model_bytes'] / 1e6:.1f}",
                     f"{acc['exact_match']:.3f}" if acc else "-", f"{acc['caption_f1']:.3f}" if acc else "-",
                     f"{r.get('speedup_vs_torch_describe_p50', float('nan')):.2f}",
                     f"{r['decode_vs_floor']:.1f}x ({r['decode_floor_ms']:.3f} ms)" if "decode_vs_floor" in r else "-",
                     f"{r['decode_vs_cache_floor']:.1f}x ({r['decode_cache_floor_ms']:.3f} ms)"
                     if "decode_vs_cache_floor" in r else "-",
                     f"{r['vision_vs_floor']:.1f}x ({r['vision_floor_ms']:.2f} ms)" if "vision_vs_floor" in r else "-"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


if __name__ == "__main__":
    sys.exit(main())
