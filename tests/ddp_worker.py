"""Run one training stage from a JSON TrainConfig and record every step's loss (rank 0) —
started directly (one process) or by torchrun (several) by tests/test_ddp.py."""

import contextlib
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    import torch

    torch.set_num_threads(1)
    import nanovla.training.train as train_module
    from train_helpers import killed_at

    with open(sys.argv[1]) as f:
        spec = json.load(f)
    losses = []
    original = train_module.Progress.update

    def record(self, step, loss, tokens, flops=0.0, peak_flops=0.0, **kw):
        losses.append(loss)
        return original(self, step, loss, tokens, flops, peak_flops, **kw)

    train_module.Progress.update = record
    if spec.get("toy_reward"):  # stage rl: a reward a random tiny model can earn (1 for a reply starting a-m)
        import nanovla.training.rl

        nanovla.training.rl.reward = lambda prompt, text, finished: float(bool(text) and "a" <= text[0].lower() <= "m")
    killed = contextlib.nullcontext()
    if spec.get("crash_at") is not None:  # a killed run: every rank stops at the same step
        killed = killed_at(train_module, spec["crash_at"], SystemExit(3))
    with killed:
        train_module.train(train_module.TrainConfig(**spec["config"]))
    if int(os.environ.get("RANK", "0")) == 0:
        with open(spec["losses"], "w") as f:
            json.dump(losses, f)


if __name__ == "__main__":
    main()
