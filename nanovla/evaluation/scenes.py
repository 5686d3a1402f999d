"""Evaluation: answer exact-match (overall and per question type) and caption object F1.

Caption F1 compares the caption's mentions (a colour word directly followed by a kind word,
"red cube") with the scene's objects as multisets: a missed object costs recall, an invented
one costs precision. Works with any runtime backend.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Iterable

import numpy as np

from ..data.language import caption, caption_mentions, caption_places, normalize_answer, sample_questions
from ..data.scenes import generate, scene_seed
from ..runtime.prompts import DESCRIBE_PROMPT


def caption_counts(predicted: str, objects: list[dict]) -> tuple[int, int, int]:
    """(true positives, predicted mentions, ground-truth objects) for one caption."""
    pred = Counter(caption_mentions(predicted))
    gold = Counter((o["color"], o["kind"]) for o in objects)
    tp = sum((pred & gold).values())
    return tp, sum(pred.values()), sum(gold.values())


def place_counts(predicted: str, reference: str) -> tuple[int, int]:
    """(agreeing, compared): objects named once in both captions, and how many of them have the
    same place words after their name in both."""
    pred, ref = caption_places(predicted), caption_places(reference)
    compared = [name for name, places in pred.items() if len(places) == 1 and len(ref.get(name, [])) == 1]
    return sum(pred[n][0] == ref[n][0] for n in compared), len(compared)


def f1(tp: int, n_pred: int, n_gold: int) -> dict:
    precision = tp / n_pred if n_pred else (1.0 if n_gold == 0 else 0.0)
    recall = tp / n_gold if n_gold else 1.0
    score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": score}


def evaluate(runtime, rows: Iterable[dict], max_questions: int | None = None, log=None,
             max_new_tokens: int = 64) -> dict:
    """rows: {'image': RGB uint8 array, 'objects': [...], 'qa': [{'question','answer','type'}]} and,
    optionally, 'caption': the scene graph's caption, whose place words caption place accuracy
    compares with the model's."""
    tp = n_pred = n_gold = 0
    places_agree = places_compared = 0
    correct, total = Counter(), Counter()
    describe_ms, examples = [], []
    n_images = 0
    t0 = time.perf_counter()
    for row in rows:
        n_images += 1
        context = runtime.encode(row["image"])
        t = time.perf_counter()
        description = runtime.generate(context, DESCRIBE_PROMPT, max_new_tokens=max_new_tokens).text
        describe_ms.append(getattr(context, "encode_ms", 0.0) + (time.perf_counter() - t) * 1000)
        a, b, c = caption_counts(description, row["objects"])
        tp, n_pred, n_gold = tp + a, n_pred + b, n_gold + c
        if row.get("caption"):  # the scene graph's caption: its place words are the reference
            agree, compared = place_counts(description, row["caption"])
            places_agree, places_compared = places_agree + agree, places_compared + compared
        for q in row["qa"][:max_questions]:
            answer = runtime.generate(context, q["question"], max_new_tokens=16).text
            ok = normalize_answer(answer) == normalize_answer(q["answer"])
            correct[q["type"]] += ok
            total[q["type"]] += 1
            if not ok and len(examples) < 20:
                examples.append({"question": q["question"], "expected": q["answer"], "got": answer})
        if log and n_images % 50 == 0:
            log(f"eval: {n_images} images, exact match so far {sum(correct.values()) / max(1, sum(total.values())):.3f}")
    n_q = sum(total.values())
    return {
        "images": n_images,
        "questions": n_q,
        "exact_match": sum(correct.values()) / n_q if n_q else 0.0,
        "exact_match_by_type": {k: correct[k] / total[k] for k in sorted(total)},
        "questions_by_type": dict(sorted(total.items())),
        "caption": {**f1(tp, n_pred, n_gold),
                    "place_accuracy": places_agree / places_compared if places_compared else None,
                    "places_compared": places_compared},
        "describe_ms_p50": float(np.percentile(describe_ms, 50)) if describe_ms else 0.0,
        "seconds": time.perf_counter() - t0,
        "wrong_examples": examples,
    }


def generated_rows(split: str, seed: int, count: int, questions: int = 8, start: int = 0):
    """Eval rows straight from the generator (same scenes as `nanovla data generate`): scenes
    start .. start + count - 1."""
    for i in range(start, start + count):
        image, scene = generate(split, seed, i)
        rng = np.random.default_rng(scene_seed(split, seed, i) ^ 0x5EED)
        yield {"image": image, "objects": [o.to_json() for o in scene.objects], "caption": caption(scene),
               "qa": sample_questions(scene, rng, split, k=questions)}

