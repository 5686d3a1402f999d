"""Draw the reward and KL curves of one RL run, or of runs that continue each other, as one PNG.

    python scripts/plot_rl_curves.py ~/nanovla-runs/r2_captions ~/nanovla-runs/r3_continue --out docs/rl_curves.png
"""

from __future__ import annotations

import argparse
import json
import os

from nanovla.training.rl import plot_curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="checkpoint directories of stage rl, in training order")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    history: dict = {"steps": [], "reward_mean": [], "kl": []}
    for run in args.runs:
        with open(os.path.join(run, "metrics.json")) as f:
            rl = json.load(f)["rl"]
        offset = history["steps"][-1] if history["steps"] else 0
        history["steps"] += [offset + s for s in rl["steps"]]
        history["reward_mean"] += rl["reward_mean"]
        history["kl"] += rl["kl"]
    plot_curves(history, args.out)
    print(f"{args.out}: {len(history['steps'])} steps from {len(args.runs)} run(s)")


if __name__ == "__main__":
    main()
