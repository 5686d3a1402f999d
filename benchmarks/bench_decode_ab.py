"""Two bundles A and B (e.g. the int8 bundle before and after a quantization change) described
frame by frame in ONE process, alternating which goes first, so that a machine shared with other
work slows both alike: per-frame ratios B / A of describe latency and of the decode step (time
per output token), and each bundle's decode step against its DRAM floor as bench_runtime.py
defines it (bytes one step reads: decode weights + the average step's KV cache, over the copy
bandwidth measured here, best of 5).

    python benchmarks/bench_decode_ab.py runs/bundle_before nanovla/assets/default_bundle --frames 60 --threads 1

Absolute milliseconds on a busy machine are noisy; read the ratios. Prints a table and one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bench_runtime import _weight_bytes_per_step, copy_bandwidth_gbs, kv_bytes_per_step, timed_describe  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="bundle A (the baseline)")
    parser.add_argument("b", help="bundle B")
    parser.add_argument("--frames", type=int, default=60, help="timed frames (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1, help="eval-scene seed of the frames")
    args = parser.parse_args(argv)

    from nanovla.data.scenes import generate
    from nanovla.runtime.ort_backend import OnnxRuntime

    names = {"A": args.a, "B": args.b}
    runtimes = {k: OnnxRuntime(p, threads=args.threads) for k, p in names.items()}
    frames = [generate("eval", args.seed, i)[0] for i in range(args.frames + args.warmup)]
    res = {k: {"describe": [], "tpot": [], "vision": [], "tokens": []} for k in names}
    for i, frame in enumerate(frames):
        for k in (["A", "B"] if i % 2 == 0 else ["B", "A"]):
            total, context, answer = timed_describe(runtimes[k], frame, args.max_new_tokens)
            if i < args.warmup:
                continue
            n = len(answer.token_ids)
            r = res[k]
            r["describe"].append(total)
            r["vision"].append(context.vision_ms)
            r["tokens"].append(n)
            r["tpot"].append((answer.latency_ms - answer.first_token_ms) / (n - 1) if n > 1 else float("nan"))
    bandwidth = copy_bandwidth_gbs()
    report = {"threads": args.threads, "frames": args.frames, "memory_bandwidth_gbs": bandwidth, "bundles": {}}
    for k, path in names.items():
        r, rt = res[k], runtimes[k]
        kv_bytes = np.dtype(rt.kv_dtype).itemsize
        weights = _weight_bytes_per_step(os.path.join(path, rt.bundle["graphs"]["decode"]["file"]))
        kv = kv_bytes_per_step(rt.n_layer, rt.n_kv_head, rt.head_dim, rt.image_tokens + 2, np.mean(r["tokens"]),
                               kv_bytes)
        floor_ms = (weights + kv) / (bandwidth * 1e9) * 1000
        tpot = float(np.nanmedian(r["tpot"]))
        report["bundles"][k] = {"path": path, "describe_ms_p50": float(np.median(r["describe"])),
                                "describe_ms_p95": float(np.percentile(r["describe"], 95)),
                                "vision_ms_p50": float(np.median(r["vision"])), "tpot_ms_p50": tpot,
                                "mean_tokens": float(np.mean(r["tokens"])), "decode_weight_bytes": int(weights),
                                "decode_floor_ms": floor_ms, "decode_vs_floor": tpot / floor_ms}
    ratio = lambda key: float(np.nanmedian(np.array(res["B"][key]) / np.array(res["A"][key])))  # noqa: E731
    report["b_over_a"] = {"describe": ratio("describe"), "tpot": ratio("tpot"),
                          "same_token_count": float(np.mean(np.array(res["A"]["tokens"]) == np.array(res["B"]["tokens"])))}
    print(f"copy bandwidth {bandwidth:.1f} GB/s, {args.threads} thread(s), {args.frames} frames")
    print("| bundle | describe p50 / p95 ms | vision ms | ms / token | decode step vs DRAM floor | tokens |")
    print("|---|---|---|---|---|---|")
    for k, b in report["bundles"].items():
        print(f"| {k}: {b['path']} | {b['describe_ms_p50']:.1f} / {b['describe_ms_p95']:.1f} | {b['vision_ms_p50']:.1f} | "
              f"{b['tpot_ms_p50']:.3f} | {b['decode_vs_floor']:.1f}x ({b['decode_floor_ms']:.3f} ms) | {b['mean_tokens']:.1f} |")
    q = report["b_over_a"]
    print(f"B / A per frame (median): describe {q['describe']:.3f}, ms per token {q['tpot']:.3f}; "
          f"same answer length on {q['same_token_count']:.0%} of frames")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
