"""Tiny data sets in the published formats (LLaVA, COCO captions, VQAv2, GQA, HF datasets /
parquet), written by the tests themselves from procedural tabletop frames. Each has one missing
and one corrupt image so skip-and-count is exercised."""

from __future__ import annotations

import json
import os

import cv2


def generate_scene_dir(folder: str, count: int, seed: int) -> str:
    """A nanovla scene directory (images/ + data.jsonl) written by `nanovla data generate`."""
    from nanovla.cli import main

    assert main(["data", "generate", "--out", folder, "--count", str(count), "--seed", str(seed)]) == 0
    return folder


def _frames(n: int, seed: int = 5):
    from nanovla.data.language import caption
    from nanovla.data.scenes import generate

    for i in range(n):
        image, scene = generate("train", seed, i)
        yield cv2.resize(image, (128, 96), interpolation=cv2.INTER_AREA), scene, caption(scene)


def write_images(folder: str, n: int, names=None, seed: int = 5) -> list[dict]:
    """n JPEG frames (+ their captions/objects); the last name is left missing, one file corrupt."""
    os.makedirs(folder, exist_ok=True)
    out = []
    for i, (image, scene, text) in enumerate(_frames(n, seed)):
        name = names[i] if names else f"{i:04d}.jpg"
        out.append({"name": name, "caption": text, "objects": [o.name for o in scene.objects],
                    "count": len(scene.objects), "first": scene.objects[0].color if scene.objects else "none"})
        if i == n - 1:
            continue  # missing
        path = os.path.join(folder, name)
        if i == n - 2:
            with open(path, "wb") as f:
                f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")  # corrupt
            continue
        cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return out


def make_llava(root: str, n: int = 8, jsonl: bool = False) -> str:
    rows = write_images(os.path.join(root, "images"), n)
    data = []
    for i, r in enumerate(rows):
        data.append({"id": f"llava-{i}", "image": r["name"], "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture."},
            {"from": "gpt", "value": r["caption"]},
            {"from": "human", "value": "How many objects are there?"},
            {"from": "gpt", "value": str(r["count"])},
        ]})
    data.append({"id": "text-only", "conversations": [{"from": "human", "value": "say hi"},
                                                       {"from": "gpt", "value": "hi"}]})
    data.append({"id": "broken", "conversations": [{"from": "gpt", "value": "answer without a question"}]})
    path = os.path.join(root, "llava.jsonl" if jsonl else "llava.json")
    with open(path, "w") as f:
        if jsonl:
            f.write("\n".join(json.dumps(d) for d in data) + "\n")
        else:
            json.dump(data, f)
    return path


def make_coco(root: str, n: int = 6) -> str:
    rows = write_images(os.path.join(root, "train2017"), n, [f"{i + 1:012d}.jpg" for i in range(n)])
    data = {"info": {}, "images": [{"id": i + 1, "file_name": r["name"]} for i, r in enumerate(rows)],
            "annotations": [{"id": 100 + i, "image_id": i + 1, "caption": r["caption"]} for i, r in enumerate(rows)]}
    path = os.path.join(root, "captions_train2017.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def make_vqa(root: str, n: int = 6) -> str:
    subtype = "val2014"
    rows = write_images(os.path.join(root, subtype), n, [f"COCO_{subtype}_{i + 1:012d}.jpg" for i in range(n)])
    questions, annotations = [], []
    for i, r in enumerate(rows):
        qid = 1000 + i
        questions.append({"image_id": i + 1, "question": "how many objects are there?", "question_id": qid})
        answers = [str(r["count"])] * 7 + ["two", "many", "3"]  # annotators disagree a little
        annotations.append({"question_id": qid, "image_id": i + 1, "question_type": "how many",
                            "answer_type": "number", "multiple_choice_answer": str(r["count"]),
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                        for k, a in enumerate(answers)]})
    qpath = os.path.join(root, f"v2_OpenEnded_mscoco_{subtype}_questions.json")
    with open(qpath, "w") as f:
        json.dump({"data_subtype": subtype, "questions": questions}, f)
    with open(os.path.join(root, f"v2_mscoco_{subtype}_annotations.json"), "w") as f:
        json.dump({"data_subtype": subtype, "annotations": annotations}, f)
    return qpath


def make_gqa(root: str, n: int = 6) -> str:
    rows = write_images(os.path.join(root, "images"), n, [f"n{i}.jpg" for i in range(n)])
    data = {str(500 + i): {"imageId": f"n{i}", "question": "what colour is the first object?",
                           "answer": r["first"], "fullAnswer": f"it is {r['first']}.",
                           "types": {"structural": "query"}} for i, r in enumerate(rows)}
    path = os.path.join(root, "val_balanced_questions.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def make_hf(root: str, n: int = 6, kind: str = "parquet") -> str:
    """A datasets-style table with an Image struct column of embedded bytes: parquet, or an Arrow
    IPC stream directory as `Dataset.save_to_disk` writes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i, (image, scene, text) in enumerate(_frames(n, seed=9)):
        ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        data = buf.tobytes() if i != n - 1 else b"corrupt bytes"
        rows.append({"id": i, "image": {"bytes": data, "path": None},
                     "question": "how many objects are there?", "answers": [str(len(scene.objects))] * 10,
                     "objects": [o.name for o in scene.objects]})
    table = pa.Table.from_pylist(rows)
    if kind == "parquet":
        path = os.path.join(root, "train-00000-of-00001.parquet")
        os.makedirs(root, exist_ok=True)
        pq.write_table(table, path)
        return path
    os.makedirs(root, exist_ok=True)
    with pa.OSFile(os.path.join(root, "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    with open(os.path.join(root, "dataset_info.json"), "w") as f:
        json.dump({"features": {}}, f)
    return root
