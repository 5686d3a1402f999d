"""Verifiable rewards for the RL stage: plain functions of (sample, ground truth) -> float.

A tabletop scene's graph is the ground truth, so no learned judge is needed:

- a short answer scores 1 when it equals the reference after `normalize_answer`, else 0;
- a caption scores its object F1 ("colour kind" mentions against the scene's objects, as the
  evaluation counts them), plus PLACE_WEIGHT x the share of its matched objects whose place words
  agree with the scene graph's caption, minus INVENTED_PENALTY per mention that matches no object;
- a reply to a data set from disk (LLaVA/COCO/VQA/GQA/HF) scores against its reference answers
  (every annotator's, for VQA): exact match (normalised) where the references are short answers
  of at most SHORT_ANSWER_WORDS words, token F1 otherwise, the best over the references;
- every sample loses UNFINISHED_PENALTY when it did not end with the answer's end token (it ran
  out of tokens or emitted another control token) and REPEAT_PENALTY when a clause repeats.
"""

from __future__ import annotations

import re
from collections import Counter

from ..data.language import normalize_answer
from ..evaluation.scenes import caption_counts, f1, place_counts

PLACE_WEIGHT = 0.5
INVENTED_PENALTY = 0.25
UNFINISHED_PENALTY = 0.5
REPEAT_PENALTY = 0.5
SHORT_ANSWER_WORDS = 3


def answer_reward(sample: str, reference: str) -> float:
    return float(normalize_answer(sample) == normalize_answer(reference))


def token_f1(sample: str, reference: str) -> float:
    """F1 of the normalised words as multisets (SQuAD's answer F1)."""
    pred, gold = normalize_answer(sample).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if not pred or not gold:
        return float(pred == gold)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def reference_reward(sample: str, references: list[str]) -> float:
    """The best score over the references: exact match when they are short answers, else token F1."""
    short = all(len(normalize_answer(r).split()) <= SHORT_ANSWER_WORDS for r in references)
    score = answer_reward if short else token_f1
    return max(score(sample, r) for r in references)


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
    """prompt: {'kind': 'caption', 'objects', 'caption'}, {'kind': 'qa', 'answer'} or
    {'kind': 'reference', 'references'} (a data set from disk)."""
    if prompt["kind"] == "caption":
        score = caption_reward(text, prompt["objects"], prompt["caption"])
    elif prompt["kind"] == "qa":
        score = answer_reward(text, prompt["answer"])
    elif prompt["kind"] == "reference":
        score = reference_reward(text, prompt["references"])
    else:
        raise ValueError(f"unknown prompt kind {prompt['kind']!r}")
    return score + format_reward(text, finished)
