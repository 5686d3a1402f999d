"""describe p50 of two models on the same frames, alternating frame by frame so both see the
same machine load (one thread each).

    python scripts/compare_describe.py MODEL_A MODEL_B [--frames 40] [--backend auto]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from nanovla.data.scenes import generate
from nanovla.runtime import load_runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs=2)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    runtimes = [load_runtime(m, backend=args.backend, threads=1) for m in args.models]
    times: list[list[float]] = [[], []]
    for i in range(args.frames + args.warmup):
        frame = generate("eval", 4242, i)[0]
        for k in ((0, 1) if i % 2 else (1, 0)):  # alternate which model goes first
            t = time.perf_counter()
            runtimes[k].describe(frame)
            if i >= args.warmup:
                times[k].append((time.perf_counter() - t) * 1000)
    for model, ms in zip(args.models, times):
        print(f"{model}: describe p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms "
              f"over {len(ms)} frames")
    print(f"ratio (second / first): {np.percentile(times[1], 50) / np.percentile(times[0], 50):.2f}")


if __name__ == "__main__":
    main()
