"""TensorRT engines against onnxruntime CUDA and torch CUDA on the same frames and prompts (a GPU
machine: a robot or a lent GPU box). Same measurements as bench_runtime.py, in its table.

    python benchmarks/bench_tensorrt.py --model runs/default/sft [--trt-precision fp16] [--frames 50]

Without TensorRT, cuda-python or a CUDA GPU it prints why, says it skipped, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def why_not_available() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'nanovla[tensorrt]' on a GPU machine)"
    from nanovla.runtime.gpu import cudart, gpu_name

    if cudart() is None:
        return "cuda-python is not installed (pip install 'nanovla[tensorrt]')"
    if gpu_name() is None:
        return "no CUDA GPU is visible"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    p.add_argument("--bundles", default="runs/bench_bundles_gpu")
    p.add_argument("--trt-precision", default="fp16", choices=("fp16", "int8"))
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--eval-scenes", type=int, default=20)
    p.add_argument("--eval-questions", type=int, default=4)
    p.add_argument("--parity-scenes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    reason = why_not_available()
    if reason:
        print(f"bench_tensorrt: skipped: {reason}. Nothing was measured.")
        return 0

    from bench_runtime import ensure_bundle, machine, print_table, run_variant, versions, vision_flops

    from nanovla.export.exporter import export_bundle
    from nanovla.export.formats import ExportOptions
    from nanovla.runtime.gpu import gpu_name
    from nanovla.runtime.base import resolve_model

    checkpoint = resolve_model(args.model)
    args.threads, args.device = 1, "cuda"
    fp32 = ensure_bundle(checkpoint, "onnx", args.bundles, args)
    fp16 = ensure_bundle(checkpoint, "onnx-fp16", args.bundles, args)
    engines = os.path.join(args.bundles, f"tensorrt-{args.trt_precision}")
    if not os.path.isfile(os.path.join(engines, "bundle.json")):
        export_bundle(checkpoint, "tensorrt", engines,
                      ExportOptions(trt_precision=args.trt_precision, parity_scenes=args.parity_scenes,
                                    allow_drift=True),
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    variants = [("torch-cuda-fp32", "torch", checkpoint, ""),
                ("ort-cuda-fp32", "onnxruntime", fp32, "cuda"),
                ("ort-cuda-fp16", "onnxruntime", fp16, "cuda"),
                ("ort-trt-ep-fp32", "onnxruntime", fp32, "tensorrt"),
                (f"tensorrt-{args.trt_precision}", "tensorrt", engines, "")]
    roof: dict = {}  # GPU rooflines are not measured here; the table shows "-"
    flops = vision_flops(fp32)
    results = {}
    for name, backend, path, provider in variants:
        r = run_variant(name, backend, path, args, roof, flops, provider=provider)
        if r is not None:
            results[name] = r
    if "torch-cuda-fp32" in results:
        base = results["torch-cuda-fp32"]["describe_ms_p50"]
        for r in results.values():
            r["speedup_vs_torch_describe_p50"] = base / r["describe_ms_p50"]
    report = {"machine": {**machine(), "gpu": gpu_name()}, "versions": versions(),
              "roofline": {"memory_bandwidth_gbs": 0.0, "matmul_fp32_gflops": 0.0, "matmul_int8_gops": 0.0},
              "settings": {**vars(args), "model": checkpoint}, "results": results,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = args.out or os.path.join(HERE, "results", f"tensorrt-{platform.node() or 'host'}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print_table(report)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
