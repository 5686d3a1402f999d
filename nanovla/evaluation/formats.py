"""Evaluation on data sets in standard formats (nanovla.data.formats), any runtime backend.

- VQA accuracy: VQAv2's soft accuracy — an answer counts min(1, #annotators who gave it / 3),
  averaged over the 10 leave-one-annotator-out subsets — after VQAv2's answer normalisation
  (punctuation, number words to digits, articles, contractions). With fewer than 3 reference
  answers (GQA, LLaVA) it is exact match after the same normalisation.
- exact match: the normalised answer equals the normalised first reference.
- caption objects: where a record lists the objects in its image, recall = listed objects the
  caption names, precision = named objects (from the data set's whole label vocabulary) that
  are in the image.
- frames without references (a rosbag conversion): the predictions, with stamp and frame id.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import numpy as np

from ..data.formats import Source, record_image
from ..runtime.preprocess import ImageError
from ..runtime.prompts import DESCRIBE_PROMPT

# ----------------------------------------------------------------------------- VQAv2 normalisation
# from the official VQA evaluation (vqaEval.py): the same tables, so scores compare with published ones
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_vqa_answer(text: str) -> str:
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = PERIOD_STRIP.sub("", out)
    words = []
    for word in out.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_soft_accuracy(prediction: str, answers: list[str]) -> float:
    """VQAv2 accuracy of one prediction against its (usually 10) annotator answers."""
    if not answers:
        return 0.0
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in answers]
    if len(gts) < 3:
        return float(pred in gts)
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:]
        scores.append(min(1.0, sum(g == pred for g in others) / 3.0))
    return float(np.mean(scores))


# ----------------------------------------------------------------------------- caption objects
def mentioned(text: str, labels: set[str]) -> Counter:
    lowered = " " + re.sub(r"[^a-z0-9 ]+", " ", text.lower()) + " "
    return Counter({label: 1 for label in labels if f" {label.lower()} " in lowered})


def evaluate_source(runtime, source: Source, limit: int = 0, log=None, max_new_tokens: int = 64) -> dict:
    """Score `runtime` on every record (or the first `limit`); the first user turn is asked."""
    labels = {o for r in source.records for o in r.objects}
    vqa_scores, exact, by_type = [], [], {}
    tp = n_pred = n_gold = 0
    predictions, wrong = [], []
    skipped = Counter()
    latencies = []
    context, context_key = None, None
    t0 = time.perf_counter()
    records = source.records[:limit] if limit else source.records
    for n, record in enumerate(records, 1):
        question = record.turns[0]["content"] or DESCRIBE_PROMPT
        try:
            key = record.image if isinstance(record.image, str) else id(record.image)
            if record.image is None:
                raise ImageError("text-only record")
            if key != context_key:  # consecutive questions about one image share its encoding
                context, context_key = runtime.encode(record_image(record)), key
            answer = runtime.generate(context, question, max_new_tokens=max_new_tokens)
        except (ImageError, ValueError) as e:
            skipped[str(e).split(":")[-1].strip()[:50]] += 1
            continue
        latencies.append(answer.latency_ms)
        reference = record.turns[1]["content"] if len(record.turns) > 1 else ""
        is_caption = question == DESCRIBE_PROMPT
        if record.objects and is_caption:
            found, gold = mentioned(answer.text, labels), Counter(record.objects)
            tp += sum((found & gold).values())
            n_pred, n_gold = n_pred + sum(found.values()), n_gold + sum(gold.values())
        if record.answers and not is_caption:
            score = vqa_soft_accuracy(answer.text, record.answers)
            ok = normalize_vqa_answer(answer.text) == normalize_vqa_answer(reference)
            vqa_scores.append(score)
            exact.append(ok)
            qtype = record.meta.get("question_type") or record.meta.get("answer_type") or ""
            if qtype:
                by_type.setdefault(qtype, []).append(score)
            if not ok and len(wrong) < 20:
                wrong.append({"id": record.id, "question": question, "expected": reference, "got": answer.text})
        if not record.answers:
            predictions.append({"id": record.id, "image": record.image if isinstance(record.image, str) else None,
                                "text": answer.text, **record.meta})
        if log and n % 50 == 0:
            log(f"eval: {n}/{len(records)} records")
    precision = tp / n_pred if n_pred else (1.0 if n_gold == 0 else 0.0)
    recall = tp / n_gold if n_gold else 1.0
    out = {
        "records": len(records),
        "answered": len(latencies),
        "skipped": dict(skipped),
        "questions": len(vqa_scores),
        "vqa_accuracy": float(np.mean(vqa_scores)) if vqa_scores else None,
        "exact_match": float(np.mean(exact)) if exact else None,
        "vqa_accuracy_by_type": {k: float(np.mean(v)) for k, v in sorted(by_type.items())},
        "caption_objects": ({"precision": precision, "recall": recall,
                             "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}
                            if n_gold else None),
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "seconds": time.perf_counter() - t0,
        "wrong_examples": wrong,
    }
    if predictions:
        out["images"] = len(predictions)
        out["predictions"] = predictions
    return out
