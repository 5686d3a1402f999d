"""Captions and question-answer pairs derived from a scene graph (the ground truth).

Every sentence here is a function of the scene graph alone, so the same scene always gets the
same caption and the same answers. Places are coarse on purpose: thirds of the frame for
left/middle/right, the base point's height for back/front (further from the camera = higher in
the frame).
"""

from __future__ import annotations

import re

import numpy as np

from .scenes import ALL_PAIRS, COLOR_NAMES, HEIGHT, HELDOUT_PAIRS, KINDS, WIDTH, Scene, SceneObject

QA_TYPES = ("exist", "count", "color", "kind", "left_right", "near_far", "left_of")

# minimum separations below which a relation is too close to call (pixels in a 640x480 frame)
MARGIN_X = 0.06 * WIDTH
MARGIN_Y = 0.05 * HEIGHT

_PLURAL = {"box": "boxes", "glass": "glasses"}
_NUMBERS = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")


def plural(kind: str) -> str:
    return _PLURAL.get(kind, kind + "s")


def depth_word(o: SceneObject, height: int = HEIGHT) -> str:
    return "at the back" if o.y < 0.66 * height else "at the front"


def place(o: SceneObject, width: int = WIDTH, height: int = HEIGHT) -> str:
    cx = o.cx
    horizontal = "on the left" if cx < width / 3 else ("on the right" if cx > 2 * width / 3 else "in the middle")
    return f"{horizontal} {depth_word(o, height)}"


def with_article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def caption(scene: Scene, colours: bool = True) -> str:
    """'a red cube on the left at the back, a blue ball in the middle at the front and ...', left to right.
    Without `colours` (a monochrome image): 'a cube on the left at the back, a ball ...'."""
    if not scene.objects:
        return "the table is empty."
    order = sorted(scene.objects, key=lambda o: o.cx)
    parts = [f"{with_article(o.name if colours else o.kind)} {place(o, scene.width, scene.height)}" for o in order]
    if len(parts) == 1:
        return parts[0] + "."
    return ", ".join(parts[:-1]) + " and " + parts[-1] + "."


def _left_of(scene: Scene, target: SceneObject) -> str | None:
    """The object directly left of `target` (nearest centre on its left); None when too close to call."""
    others = [o for o in scene.objects if o is not target]
    if any(abs(o.cx - target.cx) <= MARGIN_X for o in others):
        return None
    left = sorted((o for o in others if o.cx < target.cx), key=lambda o: target.cx - o.cx)
    if not left:
        return "nothing"
    if len(left) > 1 and left[0].cx - left[1].cx <= MARGIN_X:
        return None
    return f"the {left[0].name}"


def all_questions(scene: Scene, rng: np.random.Generator, split: str = "train") -> list[dict]:
    """Every well-posed question about the scene, each {'question', 'answer', 'type'}; a
    nearer/farther question also says whether the caption's words answer it (`in_caption`: the
    two objects' depth words differ) — every other question is answered by the caption, whose
    left-to-right order settles left/right and "directly left of".
    """
    objs = scene.objects
    present = {(o.color, o.kind) for o in objs}
    qa: list[dict] = []

    def add(question: str, answer: str, kind: str) -> None:
        qa.append({"question": question, "answer": answer, "type": kind})

    # existence: every present object, and as many absent pairs (never a held-out pair outside heldout)
    for o in objs:
        add(f"is there {with_article(o.name)}?", "yes", "exist")
    absent = [(c, k) for c, k in ALL_PAIRS
              if (c, k) not in present and (split == "heldout" or (c, k) not in HELDOUT_PAIRS)]
    for i in rng.permutation(len(absent))[: max(2, len(objs))]:
        c, k = absent[int(i)]
        add(f"is there {with_article(c + ' ' + k)}?", "no", "exist")
    # counting
    add("how many objects are there?", str(len(objs)), "count")
    for k in KINDS:
        n = sum(o.kind == k for o in objs)
        if n or rng.random() < 0.15:
            add(f"how many {plural(k)} are there?", str(n), "count")
    for c in COLOR_NAMES:
        n = sum(o.color == c for o in objs)
        if n or rng.random() < 0.1:
            add(f"how many {c} objects are there?", str(n), "count")
    # attributes of unique objects
    for o in objs:
        if sum(p.kind == o.kind for p in objs) == 1:
            add(f"what colour is the {o.kind}?", o.color, "color")
        if sum(p.color == o.color for p in objs) == 1:
            add(f"what is the {o.color} object?", o.kind, "kind")
    # pairwise relations
    for a in objs:
        for b in objs:
            if a is b:
                continue
            if abs(a.cx - b.cx) > MARGIN_X:
                add(f"is the {a.name} left or right of the {b.name}?", "left" if a.cx < b.cx else "right", "left_right")
            if abs(a.y - b.y) > MARGIN_Y:
                add(f"is the {a.name} nearer or farther than the {b.name}?", "nearer" if a.y > b.y else "farther",
                    "near_far")
                # the caption's words answer it only when the two depth words differ
                qa[-1]["in_caption"] = depth_word(a) != depth_word(b)
        answer = _left_of(scene, a)
        if answer is not None:
            add(f"what is directly left of the {a.name}?", answer, "left_of")
    return qa


def check_type_weights(weights: dict | None) -> None:
    """Weights for `sample_questions`: known question types, non-negative numbers."""
    for t, w in (weights or {}).items():
        if t not in QA_TYPES:
            raise ValueError(f"qa_type_weights: unknown question type {t!r}; types are {', '.join(QA_TYPES)}")
        if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
            raise ValueError(f"qa_type_weights: {t} = {w!r} is not a non-negative number")


def sample_questions(scene: Scene, rng: np.random.Generator, split: str = "train", k: int = 8,
                     type_weights: dict[str, float] | None = None) -> list[dict]:
    """Up to k questions, spread over the question types (round-robin over shuffled types).

    With `type_weights` (training only), each question's type is drawn in proportion to its
    weight (1 for a type not named) among the types that still have questions left.
    """
    pool = all_questions(scene, rng, split)
    if split == "heldout":  # keep the questions about held-out objects first
        def involves_heldout(q: dict) -> bool:
            text = q["question"] + " " + q["answer"]
            return any(f"{c} {kk}" in text for c, kk in HELDOUT_PAIRS)
        pool.sort(key=lambda q: not involves_heldout(q))
    by_type: dict[str, list[dict]] = {}
    for q in pool:
        by_type.setdefault(q["type"], []).append(q)
    for qs in by_type.values():
        if split != "heldout":
            order = rng.permutation(len(qs))
            qs[:] = [qs[int(i)] for i in order]
    types = list(by_type)
    rng.shuffle(types)
    chosen: list[dict] = []
    if type_weights:
        while len(chosen) < k:
            left = [t for t in types if by_type[t] and type_weights.get(t, 1.0) > 0]
            if not left:  # a type weighted 0 is never asked
                break
            w = np.array([type_weights.get(t, 1.0) for t in left], dtype=np.float64)
            t = left[int(rng.choice(len(left), p=w / w.sum()))]
            chosen.append(by_type[t].pop(0))
        return chosen
    while len(chosen) < k and any(by_type.values()):
        for t in types:
            if by_type[t] and len(chosen) < k:
                chosen.append(by_type[t].pop(0))
    return chosen


# ----------------------------------------------------------------------------- evaluation helpers

def normalize_answer(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"[^a-z0-9 ]", " ", text)
    text = re.sub(r"\b(a|an)\b", " ", text)
    return " ".join(text.split())


_MENTION = re.compile(r"\b(" + "|".join(COLOR_NAMES) + r")\s+(" + "|".join(KINDS) + r")\b")


def caption_mentions(text: str) -> list[tuple[str, str]]:
    """(colour, kind) mentions in a caption: a colour word directly followed by a kind word."""
    return [(m.group(1), m.group(2)) for m in _MENTION.finditer(text.lower())]


_PLACE = re.compile(r"\s*(on the left|in the middle|on the right)\s+(at the back|at the front)\b")


def caption_places(text: str) -> dict[tuple[str, str], list[str]]:
    """For each (colour, kind) mention, the place words right after it ("on the left at the back";
    "" when none follow), one entry per mention."""
    text = text.lower()
    out: dict[tuple[str, str], list[str]] = {}
    for m in _MENTION.finditer(text):
        after = _PLACE.match(text, m.end())
        out.setdefault((m.group(1), m.group(2)), []).append(f"{after.group(1)} {after.group(2)}" if after else "")
    return out

