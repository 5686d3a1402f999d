"""Verifiable rewards for the RL stage: plain functions of (sample, ground truth) -> float.

A tabletop scene's graph is the ground truth, so no learned judge is needed:

- a short answer scores 1 when it equals the reference after `normalize_answer`, else 0;
- a caption scores its object F1 ("colour kind" mentions against the scene's objects, as the
  evaluation counts them), plus PLACE_WEIGHT x the share of its matched objects whose place words
  agree with the scene graph's caption, minus INVENTED_PENALTY per mention that matches no object;
- every sample loses UNFINISHED_PENALTY when it did not end with the answer's end token (it ran
  out of tokens or emitted another control token) and REPEAT_PENALTY when a clause repeats.
"""

from __future__ import annotations

import re

from .data.language import normalize_answer
from .evaluate import caption_counts, f1, place_counts

PLACE_WEIGHT = 0.5
INVENTED_PENALTY = 0.25
UNFINISHED_PENALTY = 0.5
REPEAT_PENALTY = 0.5


def answer_reward(sample: str, reference: str) -> float:
    return float(normalize_answer(sample) == normalize_answer(reference))


def caption_reward(sample: str, objects: list[dict], reference_caption: str) -> float:
    """objects: the scene's [{'color', 'kind', ...}]; reference_caption: the scene graph's caption."""
    tp, n_pred, n_gold = caption_counts(sample, objects)
    agree, compared = place_counts(sample, reference_caption)
    places = agree / compared if compared else 0.0
    return f1(tp, n_pred, n_gold)["f1"] + PLACE_WEIGHT * places - INVENTED_PENALTY * (n_pred - tp)


def repeats_a_clause(text: str) -> bool:
    """True when a comma/'and'/full-stop separated clause occurs twice ("a red cube, a red cube")."""
    clauses = [c.strip() for c in re.split(r",|\.|\band\b", text.lower()) if c.strip()]
    return len(clauses) != len(set(clauses))


def format_reward(text: str, finished: bool) -> float:
    return -(0.0 if finished else UNFINISHED_PENALTY) - (REPEAT_PENALTY if repeats_a_clause(text) else 0.0)


def reward(prompt: dict, text: str, finished: bool) -> float:
    """prompt: {'kind': 'caption', 'objects', 'caption'} or {'kind': 'qa', 'answer'}."""
    if prompt["kind"] == "caption":
        score = caption_reward(text, prompt["objects"], prompt["caption"])
    elif prompt["kind"] == "qa":
        score = answer_reward(text, prompt["answer"])
    else:
        raise ValueError(f"unknown prompt kind {prompt['kind']!r}")
    return score + format_reward(text, finished)
