"""`nanovla data generate | from-rosbag | inspect | to-yolo`: data sets on disk (no torch)."""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np

from ..data.formats import load_source
from ..data.language import caption, sample_questions
from ..data.rosbag import rosbag_to_dataset
from ..data.scenes import SPLITS, generate, scene_seed
from ..data.yolo import export_yolo
from .common import CLIError, log


def cmd_generate(args) -> int:
    if args.split not in SPLITS:
        raise CLIError(f"--split must be one of {', '.join(SPLITS)}")
    if args.count < 0:
        raise CLIError("--count must be >= 0")
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    tmp = os.path.join(args.out, "data.jsonl.tmp")
    t0 = time.perf_counter()
    with open(tmp, "w") as f:
        for i in range(args.count):
            image, scene = generate(args.split, args.seed, i)
            rel = f"images/{i:06d}.png"
            if not cv2.imwrite(os.path.join(args.out, rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise CLIError(f"could not write {os.path.join(args.out, rel)}")
            rng = np.random.default_rng(scene_seed(args.split, args.seed, i) ^ 0x5EED)
            row = {"image": rel, "objects": [o.to_json() for o in scene.objects], "caption": caption(scene),
                   "qa": [{k: q[k] for k in ("question", "answer", "type")}
                          for q in sample_questions(scene, rng, args.split, k=args.questions)]}
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, os.path.join(args.out, "data.jsonl"))
    log(f"wrote {args.count} {args.split} scenes to {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_from_rosbag(args) -> int:
    summary = rosbag_to_dataset(args.bag, args.topic, args.out, every=args.every, log=log)
    print(json.dumps(summary), flush=True)
    return 0


def cmd_inspect(args) -> int:
    source = load_source(args.path, args.format, images=args.images, log=log)
    print(json.dumps(source.summary(check_images=args.check_images), indent=2), flush=True)
    return 0


def cmd_to_yolo(args) -> int:
    counts = export_yolo(args.data, args.out, classes=args.classes, val_fraction=args.val_fraction, log=log)
    log(f"wrote {counts['train']} train + {counts['val']} val images, {counts['objects']} boxes "
        f"({counts['skipped']} rows skipped) and {os.path.join(args.out, 'dataset.yaml')}")
    return 0
