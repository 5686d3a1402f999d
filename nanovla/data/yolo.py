"""A `nanovla data generate` directory as an ultralytics detection data set.

For teams that pretrain the YOLOv9 encoder as a detector with ultralytics' own trainer (instead
of, or before, nanovla's stage 0), then start from its weights:

    nanovla data generate --out data/scenes --count 20000 --seed 0
    nanovla data to-yolo data/scenes --out data/scenes-yolo            # classes = kinds
    yolo detect train data=data/scenes-yolo/dataset.yaml model=yolov9t.yaml imgsz=256 pretrained=False
    # then in a recipe:  [model.vision] arch = "runs/detect/train/weights/best.pt"

Layout written (ultralytics' convention: labels/ mirrors images/): `images/{train,val}/NAME.png`
(hard links where the file system allows, else copies), `labels/{train,val}/NAME.txt` with one
`class cx cy w h` line per object (normalised to 0..1), and `dataset.yaml`.
"""

from __future__ import annotations

import json
import os
import shutil

from .scenes import ALL_PAIRS, KINDS

CLASS_SETS = ("kind", "color_kind")


def class_names(classes: str) -> list[str]:
    if classes == "kind":
        return list(KINDS)
    if classes == "color_kind":
        return [f"{c} {k}" for c, k in ALL_PAIRS]
    raise ValueError(f"classes must be one of {', '.join(CLASS_SETS)}, got {classes!r}")


def label_lines(objects: list[dict], width: int, height: int, classes: str) -> list[str]:
    """`class cx cy w h` lines, boxes clipped to the image and normalised; empty boxes dropped."""
    names = class_names(classes)
    lines = []
    for o in objects:
        name = o["kind"] if classes == "kind" else f"{o['color']} {o['kind']}"
        if name not in names:
            raise ValueError(f"unknown object {name!r}")
        x0, y0, x1, y1 = (float(v) for v in o["bbox"])
        x0, x1 = max(0.0, min(x0, width)), max(0.0, min(x1, width))
        y0, y1 = max(0.0, min(y0, height)), max(0.0, min(y1, height))
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        cx, cy = 0.5 * (x0 + x1) / width, 0.5 * (y0 + y1) / height
        lines.append(f"{names.index(name)} {cx:.6f} {cy:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")
    return lines


def _place(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def export_yolo(data_dir: str, out: str, classes: str = "kind", val_fraction: float = 0.1, log=print) -> dict:
    """Write the ultralytics layout for `data_dir`; returns counts. Unreadable rows are skipped and counted."""
    import cv2

    names = class_names(classes)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    jsonl = os.path.join(data_dir, "data.jsonl")
    if not os.path.isfile(jsonl):
        raise FileNotFoundError(f"{data_dir}: no data.jsonl (make one with `nanovla data generate`)")
    with open(jsonl) as f:
        rows = f.readlines()
    n_val = int(round(len(rows) * val_fraction))
    counts = {"train": 0, "val": 0, "objects": 0, "skipped": 0}
    for split in ("train", "val"):
        os.makedirs(os.path.join(out, "images", split), exist_ok=True)
        os.makedirs(os.path.join(out, "labels", split), exist_ok=True)
    for n, line in enumerate(rows):
        split = "val" if n >= len(rows) - n_val else "train"
        try:
            row = json.loads(line)
            src = os.path.join(data_dir, row["image"])
            shape = cv2.imread(src, cv2.IMREAD_UNCHANGED)
            if shape is None:
                raise ValueError(f"{src}: not a readable image")
            height, width = shape.shape[:2]
            lines = label_lines(row["objects"], width, height, classes)
        except (ValueError, KeyError, TypeError) as e:
            counts["skipped"] += 1
            log(f"{jsonl}:{n + 1}: skipped ({e})")
            continue
        stem = os.path.splitext(os.path.basename(row["image"]))[0]
        dst = os.path.join(out, "images", split, os.path.basename(row["image"]))
        if os.path.exists(dst):
            os.remove(dst)
        _place(src, dst)
        with open(os.path.join(out, "labels", split, stem + ".txt"), "w") as f:
            f.write("".join(line + "\n" for line in lines))
        counts[split] += 1
        counts["objects"] += len(lines)
    with open(os.path.join(out, "dataset.yaml"), "w") as f:
        f.write(f"# written by `nanovla data to-yolo {data_dir}` (classes: {classes})\n")
        f.write(f"path: {os.path.abspath(out)}\ntrain: images/train\nval: images/{'val' if n_val else 'train'}\n")
        f.write("names:\n" + "".join(f"  {i}: {name}\n" for i, name in enumerate(names)))
    return counts
