"""Training data: cached tabletop renders (or a data.jsonl directory), conversations built from
scene graphs, and a mixture sampled so that each kind contributes a set share of answer tokens.

Rendering a 640x480 scene costs ~30 ms, so a split is rendered once (in parallel) into a
uint8 array at the model's input size plus a JSONL of scene graphs, and reused by every stage.
Questions are re-sampled from the scene graph every time an image is drawn.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..runtime.preprocess import load_image, resize_uint8
from ..runtime.prompts import DESCRIBE_PROMPT
from ..model.tokenizer import Tokenizer
from .language import QA_TYPES, caption, check_type_weights, sample_questions
from .scenes import ALL_PAIRS, Scene, SceneObject, generate

MIXTURE_KINDS = ("caption", "qa", "text", "mono")


def scene_to_json(scene: Scene) -> dict:
    return {"objects": [{"kind": o.kind, "color": o.color, "x": round(o.x, 2), "y": round(o.y, 2),
                         "size": round(o.size, 2), "bbox": [round(v, 2) for v in o.bbox]} for o in scene.objects]}


def scene_from_json(data: dict) -> Scene:
    objs = [SceneObject(kind=o["kind"], color=o["color"], x=o.get("x", 0.5 * (o["bbox"][0] + o["bbox"][2])),
                        y=o.get("y", o["bbox"][3]), size=o.get("size", o["bbox"][3] - o["bbox"][1]),
                        bbox=list(o["bbox"])) for o in data["objects"]]
    return Scene(objects=objs)


def _render_chunk(args) -> tuple[np.ndarray, list[dict]]:
    split, seed, start, stop, height, width = args
    images, scenes = [], []
    for i in range(start, stop):
        image, scene = generate(split, seed, i)
        images.append(resize_uint8(image, height, width))
        scenes.append(scene_to_json(scene))
    return np.stack(images), scenes


@dataclass
class SceneSet:
    images: np.ndarray  # (N, H, W, 3) uint8 at the model's input size
    scenes: list[Scene]
    split: str

    def __len__(self) -> int:
        return len(self.scenes)


def render_cache(split: str, seed: int, count: int, height: int, width: int, cache_dir: str,
                 workers: int = 2, log=print) -> SceneSet:
    """Render (split, seed, 0..count-1) once into cache_dir; later calls just open it.

    Scene i depends on (split, seed, i) alone, so a cache of more scenes of the same split, seed
    and size serves too: its first `count` scenes are these.
    """
    stem = os.path.join(cache_dir, f"{split}-seed{seed}-n{count}-{height}x{width}")
    for n, path in _cached_sizes(cache_dir, split, seed, height, width):
        if n < count:
            continue
        images = np.load(path + ".npy", mmap_mode="r")
        with open(path + ".jsonl") as f:
            scenes = [scene_from_json(json.loads(line)) for _, line in zip(range(count), f)]
        if len(scenes) == count and images.shape[0] == n:
            return SceneSet(images[:count], scenes, split)
    os.makedirs(cache_dir, exist_ok=True)
    chunk = 250
    jobs = [(split, seed, s, min(s + chunk, count), height, width) for s in range(0, count, chunk)]
    images = np.lib.format.open_memmap(stem + ".npy.tmp", mode="w+", dtype=np.uint8, shape=(count, height, width, 3))
    scenes_json: list[dict] = []
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for (_, _, start, stop, _, _), (imgs, sc) in zip(jobs, pool.map(_render_chunk, jobs)):
            images[start:stop] = imgs
            scenes_json += sc
            log(f"rendered {stop}/{count} {split} scenes")
    images.flush()
    del images
    with open(stem + ".jsonl.tmp", "w") as f:
        for s in scenes_json:
            f.write(json.dumps(s) + "\n")
    os.replace(stem + ".npy.tmp", stem + ".npy")
    os.replace(stem + ".jsonl.tmp", stem + ".jsonl")
    return render_cache(split, seed, count, height, width, cache_dir, workers, log)


def _cached_sizes(cache_dir: str, split: str, seed: int, height: int, width: int) -> list[tuple[int, str]]:
    """(scene count, path stem) of the complete caches of this split, seed and size, smallest first."""
    prefix, suffix = f"{split}-seed{seed}-n", f"-{height}x{width}"
    found = []
    for name in os.listdir(cache_dir) if os.path.isdir(cache_dir) else []:
        stem = name[: -len(".npy")] if name.endswith(".npy") else ""
        n = stem[len(prefix): -len(suffix)] if stem.startswith(prefix) and stem.endswith(suffix) else ""
        if n.isdigit() and os.path.isfile(os.path.join(cache_dir, stem + ".jsonl")):
            found.append((int(n), os.path.join(cache_dir, stem)))
    return sorted(found)


def load_data_dir(path: str, height: int, width: int, log=print) -> SceneSet:
    """A `nanovla data generate` directory (data.jsonl + images/); unreadable images are skipped and counted."""
    images, scenes, skipped = [], [], 0
    with open(os.path.join(path, "data.jsonl")) as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                image = load_image(os.path.join(path, row["image"]))
                scenes.append(scene_from_json(row))
                images.append(resize_uint8(image, height, width))
            except (ValueError, KeyError) as e:
                skipped += 1
                log(f"{path}/data.jsonl:{n}: skipped ({e})")
    if not scenes:
        raise ValueError(f"{path}: no usable rows in data.jsonl")
    if skipped:
        log(f"{path}: skipped {skipped} rows")
    return SceneSet(np.stack(images), scenes, "data")


# ----------------------------------------------------------------------------- conversations

def caption_example(scene: Scene, colours: bool = True) -> list[dict]:
    return [{"role": "user", "content": DESCRIBE_PROMPT},
            {"role": "assistant", "content": caption(scene, colours=colours)}]


def to_pixels(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in 0..1: what the model's forward takes."""
    return images.astype(np.float32).transpose(0, 3, 1, 2) * (1.0 / 255.0)


def to_mono(images: np.ndarray) -> np.ndarray:
    """(..., 3) RGB uint8 -> the same shape, each pixel its BT.601 luma in all three channels: what a
    mono8 camera's frame becomes in the runtime (cv2 GRAY2RGB)."""
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def qa_example(scene: Scene, rng: np.random.Generator, split: str, max_turns: int = 4,
               type_weights: dict[str, float] | None = None) -> list[dict]:
    qs = sample_questions(scene, rng, split, k=int(rng.integers(1, max_turns + 1)), type_weights=type_weights)
    turns: list[dict] = []
    for q in qs:
        turns += [{"role": "user", "content": q["question"]}, {"role": "assistant", "content": q["answer"]}]
    return turns


def renamed(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same layout with each object's (colour, kind) redrawn from all 64 pairs (distinct)."""
    pairs = ALL_PAIRS
    picks = rng.choice(len(pairs), size=len(scene.objects), replace=False) if scene.objects else []
    objects = [SceneObject(kind=pairs[int(j)][1], color=pairs[int(j)][0], x=o.x, y=o.y, size=o.size, bbox=list(o.bbox))
               for o, j in zip(scene.objects, picks)]
    return Scene(objects=objects, width=scene.width, height=scene.height)


def text_example(scene: Scene, rng: np.random.Generator, split: str, all_pairs: bool = False) -> list[dict]:
    """A text-only turn: the scene is given in words, the answer must be read from them.

    With `all_pairs` the words name any of the 64 (colour, kind) pairs, held-out ones included:
    no image is involved, so the decoder learns the language a pretrained LLM would bring (that
    a red ball can be talked about) while no training image ever shows a held-out pair.
    """
    if all_pairs:
        scene = renamed(scene, rng)
    # only a question the caption's words answer: a nearer/farther question about two objects that
    # share a depth word ("at the back") has no answer in the text, and a turn asking it rewards a guess
    qs = [q for q in sample_questions(scene, rng, split, k=len(QA_TYPES)) if q.get("in_caption", True)][:1]
    if not qs:
        return caption_example(scene)
    q = qs[0]
    return [{"role": "user", "content": f"the scene: {caption(scene)} {q['question']}"},
            {"role": "assistant", "content": q["answer"]}]


@dataclass
class Example:
    ids: list[int]
    mask: list[int]
    image_index: int  # -1 for text-only
    mono: bool = False  # the image is shown in grey (a colourless caption)


class Mixture:
    """Samples examples so each kind's share of *answer tokens* matches `shares` (not of rows)."""

    def __init__(self, data: SceneSet, tokenizer: Tokenizer, image_tokens: int, shares: dict[str, float],
                 seed: int, max_len: int, qa_turns: int = 4, qa_type_weights: dict[str, float] | None = None,
                 text_all_pairs: bool = False):
        unknown = set(shares) - set(MIXTURE_KINDS)
        if unknown:
            raise ValueError(f"unknown mixture kinds {sorted(unknown)}; expected {MIXTURE_KINDS}")
        check_type_weights(qa_type_weights)
        self.qa_type_weights = dict(qa_type_weights or {})
        self.text_all_pairs = text_all_pairs
        self.data, self.tok, self.image_tokens = data, tokenizer, image_tokens
        self.rng = np.random.default_rng(seed)
        self.max_len, self.qa_turns = max_len, qa_turns
        self.kinds = [k for k, v in shares.items() if v > 0]
        # estimate mean answer tokens per example of each kind, then weight rows by share/mean
        means = {}
        for k in self.kinds:
            counts = [sum(self.make(k).mask) for _ in range(200)]
            means[k] = max(1.0, float(np.mean(counts)))
        w = np.array([shares[k] / means[k] for k in self.kinds])
        self.probs = w / w.sum()
        self.mean_answer_tokens = means

    def make(self, kind: str) -> Example:
        i = int(self.rng.integers(len(self.data)))
        scene = self.data.scenes[i]
        split = self.data.split
        if kind == "caption":
            turns, image = caption_example(scene), True
        elif kind == "qa":
            turns, image = qa_example(scene, self.rng, split, self.qa_turns, self.qa_type_weights), True
        elif kind == "mono":  # the image in grey, described without colour words
            turns, image = caption_example(scene, colours=False), True
        else:
            turns, image = text_example(scene, self.rng, split, self.text_all_pairs), False
        r = self.tok.render(turns, self.image_tokens if image else 0)
        ids, mask = r.ids[: self.max_len], r.mask[: self.max_len]
        return Example(ids, mask, i if image else -1, mono=kind == "mono")

    def sample(self) -> Example:
        kind = self.kinds[int(self.rng.choice(len(self.kinds), p=self.probs))]
        return self.make(kind)

    def batch(self, batch_size: int, pad_id: int):
        """(ids (B, T) int64, mask (B, T), pixels (n_img, 3, H, W) float32 or None) as numpy."""
        ids, mask, idx, mono = self.batch_rows(batch_size, pad_id)
        pixels = None
        if idx is not None:
            images = self.data.images[idx]
            if mono.any():
                images = images.copy()
                images[mono] = to_mono(images[mono])
            pixels = to_pixels(images)
        return ids, mask, pixels

    def batch_rows(self, batch_size: int, pad_id: int):
        """(ids, mask, image indices into `data` in placeholder order or None, which of those images are
        shown in grey (bool array) or None): `batch` without pixels."""
        examples = [self.sample() for _ in range(batch_size)]
        # image rows first keeps the image order equal to the placeholder order
        examples.sort(key=lambda e: e.image_index < 0)
        T = max(len(e.ids) for e in examples)
        ids = np.full((batch_size, T), pad_id, np.int64)
        mask = np.zeros((batch_size, T), np.int64)
        for r, e in enumerate(examples):
            ids[r, : len(e.ids)] = e.ids
            mask[r, : len(e.mask)] = e.mask
        rows = [e for e in examples if e.image_index >= 0]
        if not rows:
            return ids, mask, None, None
        return ids, mask, np.array([e.image_index for e in rows]), np.array([e.mono for e in rows])


def corpus(data: SceneSet, rng: np.random.Generator, n: int = 4000):
    """Text for training the tokenizer: captions, questions, answers and text-only turns."""
    for i in range(min(n, len(data))):
        scene = data.scenes[i]
        yield caption(scene)
        for q in sample_questions(scene, rng, data.split, k=8):
            yield q["question"] + " " + q["answer"]
    yield DESCRIBE_PROMPT + " the scene:"
