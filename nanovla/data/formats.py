"""Data sets from disk in their published formats, read into one shape: `Record`s of
conversation turns plus an image (a file path or encoded bytes, decoded only when used).

    llava   LLaVA / ShareGPT4V conversation JSON or JSONL: {"image": "rel/path.jpg",
            "conversations": [{"from": "human", "value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}, ...]}
            (multi-turn; rows without "image" are text-only; "messages" with role/content also read)
    coco    COCO captions JSON ({"images": [...], "annotations": [{"image_id", "caption"}]}): one
            caption record per annotation, asked with nanovla's describe prompt
    vqa     VQAv2 questions JSON + the annotations JSON beside it (found by data_subtype); images
            COCO_<subtype>_<id:012d>.jpg (or <id:012d>.jpg) in the image folder or its <subtype>/
    gqa     GQA questions JSON ({qid: {"imageId", "question", "answer", ...}}); images <imageId>.jpg
    hf      a Hugging Face `datasets` directory written by save_to_disk (*.arrow), or parquet
            file(s); columns conversations | messages | question+answer(s) | caption, and an image
            column (the datasets Image struct {bytes, path}, or a path string)
    nanovla a `nanovla data generate` / `data from-rosbag` directory (data.jsonl + images/)

The `<image>` placeholder is removed from the text: nanovla places the image tokens at the start
of the first user turn, wherever the data set put the placeholder. A row that cannot be read is
skipped and counted (`Source.skipped_rows`); a missing or corrupt image is found when it is
decoded, and the training mixture then skips that example and counts it.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..runtime.preprocess import ImageError, decode_image, load_image
from ..runtime.prompts import DESCRIBE_PROMPT

FORMATS = ("llava", "coco", "vqa", "gqa", "hf", "nanovla")
IMAGE_PLACEHOLDER = "<image>"
ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant"}


@dataclass
class Record:
    turns: list[dict]  # [{'role': 'user'|'assistant', 'content': str}, ...], alternating from user
    image: str | bytes | None = None  # absolute path, encoded bytes, or None (text only)
    answers: list[str] = field(default_factory=list)  # VQA: every annotator's answer (for soft accuracy)
    objects: list[str] = field(default_factory=list)  # object labels in the image, when known
    id: str = ""
    meta: dict = field(default_factory=dict)  # e.g. question type, rosbag stamp


@dataclass
class Source:
    path: str
    format: str
    records: list[Record]
    skipped_rows: int = 0
    skip_reasons: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def summary(self, check_images: bool = False) -> dict:
        out = {"path": self.path, "format": self.format, "records": len(self.records),
               "with_image": sum(r.image is not None for r in self.records),
               "turns": sum(len(r.turns) for r in self.records), "skipped_rows": self.skipped_rows,
               "skip_reasons": self.skip_reasons}
        if check_images:
            bad = 0
            for r in self.records:
                if r.image is not None:
                    try:
                        record_image(r)
                    except ImageError:
                        bad += 1
            out["unreadable_images"] = bad
        return out


def record_image(record: Record) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a record's image; ImageError when missing or corrupt."""
    if record.image is None:
        raise ImageError(f"record {record.id!r} has no image")
    if isinstance(record.image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(record.image), name=f"record {record.id!r}")
    return load_image(record.image)


# ----------------------------------------------------------------------------- helpers

class _Skips:
    def __init__(self):
        self.count, self.reasons = 0, {}

    def add(self, reason: str) -> None:
        self.count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def clean_text(text: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def conversation_turns(messages: list) -> list[dict]:
    """LLaVA `conversations` ({from, value}) or chat `messages` ({role, content}) -> alternating turns.

    System turns are dropped; consecutive turns of one role are joined; a trailing user turn
    (no answer) is dropped. Raises ValueError when no user/assistant pair remains."""
    turns: list[dict] = []
    for m in messages:
        role = ROLE_NAMES.get(str(m.get("from", m.get("role", ""))).lower())
        content = m.get("value", m.get("content", ""))
        if isinstance(content, list):  # [{'type': 'text', 'text': ...}, {'type': 'image'}]
            content = " ".join(c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text")
        if role is None or not isinstance(content, str):
            continue
        content = clean_text(content)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = (turns[-1]["content"] + "\n" + content).strip()
        elif turns or role == "user":
            turns.append({"role": role, "content": content})
    if turns and turns[-1]["role"] == "user":
        turns.pop()
    if len(turns) < 2:
        raise ValueError("no user/assistant turn pair")
    return turns


def _image_path(images: str, name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(images, name)


def _read_json_or_jsonl(path: str, skips: _Skips):
    if path.endswith(".jsonl"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        skips.add("not JSON")
        return rows
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- formats

def load_llava(path: str, images: str, skips: _Skips) -> list[Record]:
    rows = _read_json_or_jsonl(path, skips)
    if isinstance(rows, dict):
        rows = rows.get("data", rows.get("annotations", []))
    records = []
    for n, row in enumerate(rows):
        try:
            turns = conversation_turns(row.get("conversations") or row.get("messages") or [])
        except (ValueError, AttributeError) as e:
            skips.add(str(e) if isinstance(e, ValueError) else "not an object")
            continue
        image = row.get("image")
        if isinstance(image, list):  # multi-image rows: nanovla takes one image per example
            if len(image) != 1:
                skips.add("multi-image row")
                continue
            image = image[0]
        records.append(Record(turns, _image_path(images, image) if image else None, id=str(row.get("id", n))))
    return records


def load_coco(data: dict, images: str, skips: _Skips) -> list[Record]:
    files = {im["id"]: im["file_name"] for im in data.get("images", [])}
    records = []
    for ann in data["annotations"]:
        name = files.get(ann.get("image_id"))
        caption = str(ann.get("caption", "")).strip()
        if name is None or not caption:
            skips.add("annotation without image or caption")
            continue
        records.append(Record([{"role": "user", "content": DESCRIBE_PROMPT}, {"role": "assistant", "content": caption}],
                              _image_path(images, name), answers=[caption], id=str(ann.get("id", len(records))),
                              meta={"image_id": ann.get("image_id")}))
    return records


def _find_vqa_annotations(path: str, subtype: str) -> str | None:
    folder = os.path.dirname(os.path.abspath(path))
    candidates = [p for p in glob.glob(os.path.join(folder, "*annotations*.json")) if subtype in os.path.basename(p)]
    if not candidates:
        candidates = glob.glob(os.path.join(folder, "*annotations*.json"))
    return candidates[0] if len(candidates) == 1 else None


def load_vqa(path: str, data: dict, images: str, skips: _Skips, annotations: str = "") -> list[Record]:
    subtype = data.get("data_subtype", "")
    annotations = annotations or _find_vqa_annotations(path, subtype)
    if not annotations:
        raise ValueError(f"{path}: VQA questions need their annotations JSON beside them "
                         f"(a *annotations*.json with {subtype!r} in its name)")
    with open(annotations, encoding="utf-8") as f:
        by_question = {a["question_id"]: a for a in json.load(f)["annotations"]}
    folders = [images, os.path.join(images, subtype)] if subtype else [images]
    records = []
    for q in data["questions"]:
        ann = by_question.get(q["question_id"])
        if ann is None:
            skips.add("question without annotation")
            continue
        image_id = q["image_id"]
        names = [f"COCO_{subtype}_{image_id:012d}.jpg", f"{image_id:012d}.jpg"]
        candidates = [os.path.join(d, n) for d in folders for n in names]
        image = next((c for c in candidates if os.path.exists(c)), candidates[0])
        answers = [str(a["answer"]) for a in ann.get("answers", [])]
        best = ann.get("multiple_choice_answer") or (answers[0] if answers else "")
        records.append(Record([{"role": "user", "content": q["question"]}, {"role": "assistant", "content": best}],
                              image, answers=answers or [best], id=str(q["question_id"]),
                              meta={"question_type": ann.get("question_type", ""),
                                    "answer_type": ann.get("answer_type", "")}))
    return records


def load_gqa(data: dict, images: str, skips: _Skips) -> list[Record]:
    records = []
    for qid, q in data.items():
        if not isinstance(q, dict) or "imageId" not in q or "answer" not in q:
            skips.add("not a GQA question")
            continue
        records.append(Record([{"role": "user", "content": q["question"]}, {"role": "assistant", "content": q["answer"]}],
                              os.path.join(images, f"{q['imageId']}.jpg"), answers=[q["answer"]], id=str(qid),
                              meta={"question_type": (q.get("types") or {}).get("structural", "")}))
    return records


def _hf_tables(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if os.path.isfile(path):
        yield pq.read_table(path)
        return
    arrow = sorted(glob.glob(os.path.join(path, "**", "*.arrow"), recursive=True))
    parquet = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    for file in arrow:  # save_to_disk writes Arrow IPC streams
        with pa.memory_map(file) as source:
            try:
                yield pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                yield pa.ipc.open_file(source).read_all()
    for file in parquet:
        yield pq.read_table(file)
    if not arrow and not parquet:
        raise ValueError(f"{path}: no *.arrow or *.parquet files (a datasets save_to_disk directory or parquet)")


def _hf_image(value, images: str):
    if value is None:
        return None
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else None
        if value is None:
            raise ValueError("multi-image row")
    if isinstance(value, dict):  # the datasets Image feature: {'bytes': ..., 'path': ...}
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return _image_path(images, value) if value else None


def load_hf(path: str, images: str, skips: _Skips) -> list[Record]:
    records = []
    for table in _hf_tables(path):
        columns = set(table.column_names)
        image_column = next((c for c in ("image", "images", "image_path", "file_name") if c in columns), None)
        for n, row in enumerate(table.to_pylist()):
            try:
                if row.get("conversations") or row.get("messages"):
                    turns = conversation_turns(row.get("conversations") or row.get("messages"))
                    answers = []
                elif "question" in row and ("answer" in row or "answers" in row):
                    raw = row.get("answers", row.get("answer"))
                    answers = [a["answer"] if isinstance(a, dict) else str(a) for a in
                               (raw if isinstance(raw, list) else [raw])]
                    best = row.get("multiple_choice_answer") or row.get("answer") or answers[0]
                    if isinstance(best, list):
                        best = best[0]
                    turns = [{"role": "user", "content": clean_text(row["question"])},
                             {"role": "assistant", "content": str(best)}]
                elif row.get("caption") or row.get("captions") or row.get("text"):
                    caption = row.get("caption") or row.get("captions") or row.get("text")
                    answers = caption if isinstance(caption, list) else [caption]
                    turns = [{"role": "user", "content": DESCRIBE_PROMPT},
                             {"role": "assistant", "content": str(answers[0])}]
                else:
                    raise ValueError("no conversations/messages, question+answer or caption column")
                image = _hf_image(row.get(image_column), images) if image_column else None
            except (ValueError, KeyError, IndexError, TypeError) as e:
                skips.add(str(e).split(":")[0][:60])
                continue
            objects = row.get("objects") if isinstance(row.get("objects"), list) else []
            records.append(Record(turns, image, answers=answers, id=str(row.get("id", row.get("question_id", n))),
                                  objects=[str(o) for o in objects if isinstance(o, str)]))
    return records


def load_nanovla(path: str, skips: _Skips) -> list[Record]:
    records = []
    with open(os.path.join(path, "data.jsonl"), encoding="utf-8") as f:
        for n, line in enumerate(f):
            try:
                row = json.loads(line)
                image = os.path.join(path, row["image"])
            except (json.JSONDecodeError, KeyError, TypeError):
                skips.add("bad data.jsonl row")
                continue
            objects = [f"{o['color']} {o['kind']}" for o in row.get("objects", []) if "color" in o and "kind" in o]
            meta = {k: row[k] for k in ("stamp", "frame_id") if k in row}
            if row.get("caption"):
                records.append(Record([{"role": "user", "content": DESCRIBE_PROMPT},
                                       {"role": "assistant", "content": row["caption"]}], image,
                                      answers=[row["caption"]], objects=objects, id=f"{n}:caption", meta=meta))
            for k, q in enumerate(row.get("qa", [])):
                records.append(Record([{"role": "user", "content": q["question"]},
                                       {"role": "assistant", "content": q["answer"]}], image, answers=[q["answer"]],
                                      objects=objects, id=f"{n}:qa{k}", meta={**meta, "question_type": q.get("type", "")}))
            if not row.get("caption") and not row.get("qa"):  # frames only (rosbag): describe them
                records.append(Record([{"role": "user", "content": DESCRIBE_PROMPT},
                                       {"role": "assistant", "content": ""}], image, id=f"{n}", meta=meta))
    return records


def detect_format(path: str) -> str:
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "data.jsonl")):
            return "nanovla"
        return "hf"
    if path.endswith((".parquet", ".arrow")):
        return "hf"
    if path.endswith(".jsonl"):
        return "llava"
    if not path.endswith(".json"):
        raise ValueError(f"{path}: cannot tell its format; pass --format ({', '.join(FORMATS)})")
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        return "llava"
    if '"questions"' in head:
        return "vqa"
    if '"annotations"' in head or '"images"' in head or '"info"' in head:
        return "coco"
    return "gqa"


def load_source(path: str, format: str = "auto", images: str = "", annotations: str = "", log=None) -> Source:
    """Read one data set from disk; `images` is the image folder (default: the file's folder)."""
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file or directory")
    format = detect_format(path) if format in ("", "auto") else format
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}")
    explicit_images = bool(images)
    images = os.path.abspath(images or (path if os.path.isdir(path) else os.path.dirname(path)))
    skips = _Skips()
    try:
        if format == "llava":
            records = load_llava(path, images, skips)
        elif format == "hf":
            records = load_hf(path, images, skips)
        elif format == "nanovla":
            records = load_nanovla(path, skips)
        else:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if format == "coco":
                split = os.path.basename(path).rsplit(".", 1)[0].split("_")[-1]  # captions_train2017 -> train2017
                if not explicit_images and os.path.isdir(os.path.join(images, split)):
                    images = os.path.join(images, split)
                records = load_coco(data, images, skips)
            elif format == "vqa":
                records = load_vqa(path, data, images, skips, annotations)
            else:
                records = load_gqa(data, images, skips)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a {format} data set ({type(e).__name__}: {e})") from None
    if not records:
        raise ValueError(f"{path}: no usable {format} records ({skips.count} rows skipped: {skips.reasons})")
    if log and skips.count:
        log(f"{path}: skipped {skips.count} rows ({', '.join(f'{k}: {v}' for k, v in skips.reasons.items())})")
    return Source(path, format, records, skips.count, skips.reasons)
