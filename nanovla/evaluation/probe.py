"""`nanovla probe`: what a checkpoint's image tokens carry, beside what its decoder answers.

Linear probes read, from the image tokens the decoder receives (the projector's output), each
object's kind, colour, horizontal centre and base height (the token of the grid cell holding the
centre of its box), and each pair relation — left/right, nearer/farther — from the two objects'
tokens side by side. They are fitted on part of the scenes and scored on the rest; the model's
own answers are scored on that rest too. A relation the probe reads well and the model answers
at chance is a decoder problem, not an encoder one.

Probes: multinomial logistic regression (L2, L-BFGS) for classes, ridge regression for positions
(R² on the held-out scenes); both on standardised features.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.language import MARGIN_X, MARGIN_Y
from ..data.scenes import COLOR_NAMES, HEIGHT, KINDS, WIDTH, generate
from ..runtime.preprocess import resize_uint8
from ..runtime.torch_backend import TorchRuntime
from .scenes import evaluate, generated_rows

# (row label, how the probe is scored, the question type whose answers need it; "" for none)
ROWS = (
    ("kind", "accuracy", "kind"),
    ("colour", "accuracy", "color"),
    ("horizontal centre", "R²", ""),
    ("base height", "R²", ""),
    ("left/right of a pair", "accuracy", "left_right"),
    ("nearer/farther of a pair", "accuracy", "near_far"),
)


def _cell(cx: float, cy: float, rows: int, cols: int) -> int:
    r = min(rows - 1, max(0, int(cy / HEIGHT * rows)))
    c = min(cols - 1, max(0, int(cx / WIDTH * cols)))
    return r * cols + c


@torch.no_grad()
def collect(model, split: str, seed: int, count: int, batch: int = 50) -> dict:
    """Per object and per ordered pair: image-token features, targets and the scene index."""
    rows, cols = model.cfg.projector.grid
    v = model.cfg.vision
    objects: dict[str, list] = {"x": [], "kind": [], "colour": [], "cx": [], "y": [], "scene": []}
    pairs: dict[str, list] = {"x": [], "near": [], "left": [], "near_ok": [], "left_ok": [], "scene": []}
    images, scenes = [], []

    def flush() -> None:
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
        tokens = model.encode_image(pixels).float().numpy()  # (B, N, D)
        for b, (index, scene) in enumerate(scenes):
            toks = [tokens[b, _cell(o.cx, 0.5 * (o.bbox[1] + o.bbox[3]), rows, cols)] for o in scene.objects]
            for o, t in zip(scene.objects, toks):
                objects["x"].append(t)
                objects["kind"].append(KINDS.index(o.kind))
                objects["colour"].append(COLOR_NAMES.index(o.color))
                objects["cx"].append(o.cx / WIDTH)
                objects["y"].append(o.y / HEIGHT)
                objects["scene"].append(index)
            for i, a in enumerate(scene.objects):
                for j, o in enumerate(scene.objects):
                    if i == j:
                        continue
                    pairs["x"].append(np.concatenate([toks[i], toks[j]]))
                    pairs["near"].append(int(a.y > o.y))
                    pairs["left"].append(int(a.cx < o.cx))
                    # the questions' margins: a pair closer than this is never asked
                    pairs["near_ok"].append(abs(a.y - o.y) > MARGIN_Y)
                    pairs["left_ok"].append(abs(a.cx - o.cx) > MARGIN_X)
                    pairs["scene"].append(index)
        images.clear()
        scenes.clear()

    for i in range(count):
        image, scene = generate(split, seed, i)
        images.append(resize_uint8(image, v.image_height, v.image_width))
        scenes.append((i, scene))
        if len(images) == batch:
            flush()
    if images:
        flush()
    return {"objects": {k: np.asarray(x) for k, x in objects.items()},
            "pairs": {k: np.asarray(x) for k, x in pairs.items()}}


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def ridge_r2(x_train, y_train, x_test, y_test, ridge: float = 1.0) -> float:
    """R² on the test part of a ridge regression fitted on the train part."""
    x_train, x_test = _standardise(x_train, x_test)
    a = np.c_[x_train, np.ones(len(x_train))].astype(np.float64)
    reg = ridge * np.eye(a.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    w = np.linalg.solve(a.T @ a + reg, a.T @ y_train)
    pred = np.c_[x_test, np.ones(len(x_test))] @ w
    return float(1 - ((y_test - pred) ** 2).sum() / max(((y_test - y_test.mean()) ** 2).sum(), 1e-12))


def logistic_accuracy(x_train, y_train, x_test, y_test, l2: float = 1e-3, iters: int = 200) -> float:
    """Test accuracy of a multinomial logistic regression fitted on the train part."""
    x_train, x_test = _standardise(x_train, x_test)
    xt = torch.from_numpy(x_train).float()
    yt = torch.from_numpy(y_train).long()
    n_class = int(max(y_train.max(), y_test.max())) + 1
    w = torch.zeros(xt.shape[1], n_class, requires_grad=True)
    b = torch.zeros(n_class, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (torch.from_numpy(x_test).float() @ w + b).argmax(1).numpy()
    return float((pred == y_test).mean())


def probe(model, tokenizer, scenes: int = 400, split: str = "eval", seed: int = 2024,
          train_fraction: float = 0.7, answers: bool = True, log=None) -> dict:
    """Probe scores on the held-out scenes and (with `answers`) the model's exact match there."""
    if scenes < 10:
        raise ValueError(f"probe needs at least 10 scenes, got {scenes}")
    model = model.float().eval()
    data = collect(model, split, seed, scenes)
    cut = int(round(scenes * train_fraction))
    ob, pr = data["objects"], data["pairs"]
    otr, ote = ob["scene"] < cut, ob["scene"] >= cut
    out: dict = {"scenes": scenes, "split": split, "seed": seed, "train_scenes": cut,
                 "objects": int(len(ob["scene"])), "tokens": {}}
    tokens = out["tokens"]
    tokens["kind"] = logistic_accuracy(ob["x"][otr], ob["kind"][otr], ob["x"][ote], ob["kind"][ote])
    tokens["colour"] = logistic_accuracy(ob["x"][otr], ob["colour"][otr], ob["x"][ote], ob["colour"][ote])
    tokens["horizontal centre"] = ridge_r2(ob["x"][otr], ob["cx"][otr], ob["x"][ote], ob["cx"][ote])
    tokens["base height"] = ridge_r2(ob["x"][otr], ob["y"][otr], ob["x"][ote], ob["y"][ote])
    for name, label, ok in (("left/right of a pair", "left", "left_ok"), ("nearer/farther of a pair", "near", "near_ok")):
        keep = pr[ok]
        tr, te = keep & (pr["scene"] < cut), keep & (pr["scene"] >= cut)
        tokens[name] = logistic_accuracy(pr["x"][tr], pr[label][tr], pr["x"][te], pr[label][te])
        out[f"{label}_pairs"] = int(keep.sum())
    if log:
        log(f"probe: {len(ob['scene'])} objects, fitted on {cut} scenes, scored on {scenes - cut}")
    if answers:  # greedy, on the scenes the probes were scored on
        scored = evaluate(TorchRuntime.from_model(model, tokenizer), generated_rows(split, seed, scenes - cut, start=cut))
        out["answers"], out["questions"] = scored["exact_match_by_type"], scored["questions_by_type"]
    return out


def format_table(result: dict) -> str:
    answers = result.get("answers", {})
    lines = ["| what the image tokens carry | linear probe (held-out scenes) | question type | model's answers (EM) |",
             "|---|---|---|---|"]
    shown = set()
    for row, score, qtype in ROWS:
        value = result["tokens"][row]
        shown.add(qtype)
        em = f"{answers[qtype]:.3f}" if qtype in answers else ""
        lines.append(f"| {row} | {score} {value:.3f} | {qtype} | {em} |")
    for qtype in sorted(set(answers) - shown):
        lines.append(f"| | | {qtype} | {answers[qtype]:.3f} |")
    return "\n".join(lines)
