"""The bundle format's one home: what a bundle holds, how bundle.json is written (by the
exporter) and read and checked (by the runtimes).

A bundle is a directory: the vision, prefill and decode graphs (ONNX, and TensorRT engines where
built), tokenizer.json and bundle.json. This module needs only the standard library (and
tokenizers, through the fingerprint), so the robot-side runtime can read and check a bundle
without PyTorch or onnx. `nanovla.export` imports it; it imports nothing from `nanovla.export`.

Loading is strict: a missing file, a file whose digest differs from bundle.json, a tokenizer
that is not the one the graphs were exported with, or a graph whose inputs/outputs differ from
bundle.json are each a `BundleError` whose one-line message names the file and the difference.
"""

from __future__ import annotations

import hashlib
import json
import os

from ..model.tokenizer import Tokenizer, tokenizer_fingerprint

BUNDLE_FORMAT = "nanovla-bundle/1"
BUNDLE_FILE = "bundle.json"
GRAPHS = ("vision", "prefill", "decode")
GRAPH_FILES = {g: f"{g}.onnx" for g in GRAPHS}  # each graph's file name inside a bundle
WEIGHTS_FILE = "model.safetensors"  # a checkpoint's weights (its digest is recorded as the bundle's source)
REQUIRED_KEYS = ("format", "precision", "model", "preprocessing", "tokenizer", "graphs", "producer", "parity")
MODEL_KEYS = ("image_height", "image_width", "image_tokens", "n_layer", "n_kv_head", "head_dim", "n_embd",
              "vocab_size", "max_seq_len", "image_token_id")


class BundleError(ValueError):
    """A directory that is not a usable bundle; the message says why in one line."""


def is_bundle(path: str) -> bool:
    return os.path.isfile(os.path.join(path, BUNDLE_FILE))


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(checkpoint_dir: str) -> str:
    """sha256 of a checkpoint's weights file: bundle.json's producer.source_weights_sha256, which
    says which weights a bundle was exported from (a stale bundle is one whose digest differs)."""
    return sha256_file(os.path.join(checkpoint_dir, WEIGHTS_FILE))


def file_entry(bundle_dir: str, name: str) -> dict:
    path = os.path.join(bundle_dir, name)
    return {"file": name, "bytes": os.path.getsize(path), "sha256": sha256_file(path)}


def write_bundle_json(bundle_dir: str, data: dict) -> None:
    data = {"format": BUNDLE_FORMAT, **data}
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise BundleError(f"bundle.json would lack {', '.join(missing)}")
    tmp = os.path.join(bundle_dir, BUNDLE_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(bundle_dir, BUNDLE_FILE))


def read_bundle(path: str, check_digests: bool = True) -> dict:
    """bundle.json, checked against the files beside it (not against the graphs' I/O: see check_io)."""
    where = os.path.join(path, BUNDLE_FILE)
    if not os.path.isfile(where):
        raise BundleError(f"{path}: not a bundle (no {BUNDLE_FILE}); make one with `nanovla export`")
    try:
        with open(where) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"{where}: format {found!r}, expected {BUNDLE_FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise BundleError(f"{where}: missing keys {', '.join(missing)}")
    missing = [k for k in MODEL_KEYS if k not in data["model"]]
    if missing:
        raise BundleError(f"{where}: model section lacks {', '.join(missing)}")
    for graph in GRAPHS:
        if graph not in data["graphs"]:
            raise BundleError(f"{where}: no {graph!r} graph listed")
    entries = [data["graphs"][g] for g in GRAPHS] + list(data.get("engines", {}).get("files", {}).values())
    entries.append(data["tokenizer"])
    for entry in entries:
        file = os.path.join(path, entry["file"])
        if not os.path.isfile(file):
            raise BundleError(f"{path}: {entry['file']} is missing (listed in {BUNDLE_FILE}); re-export the bundle")
        size = os.path.getsize(file)
        if size != entry["bytes"]:
            raise BundleError(f"{file}: {size} bytes, {BUNDLE_FILE} says {entry['bytes']} (modified or truncated)")
        if check_digests and sha256_file(file) != entry["sha256"]:
            raise BundleError(f"{file}: sha256 differs from {BUNDLE_FILE} (the file was modified after export)")
    check_tokenizer(path, data)
    return data


def check_tokenizer(path: str, data: dict) -> None:
    file = os.path.join(path, data["tokenizer"]["file"])
    try:
        fingerprint = tokenizer_fingerprint(file)
        tokenizer = Tokenizer.load(file)
    except (ValueError, OSError, KeyError) as e:
        raise BundleError(f"{file}: unreadable tokenizer ({e})") from None
    if fingerprint != data["tokenizer"]["fingerprint"]:
        raise BundleError(f"{file}: vocabulary fingerprint {fingerprint} differs from the exported "
                          f"{data['tokenizer']['fingerprint']} (wrong tokenizer for these graphs)")
    if tokenizer.special_ids() != data["tokenizer"]["special_tokens"]:
        raise BundleError(f"{file}: special token ids differ from {BUNDLE_FILE}")
    if tokenizer.vocab_size != data["model"]["vocab_size"]:
        raise BundleError(f"{file}: {tokenizer.vocab_size} tokens, the graphs expect {data['model']['vocab_size']}")


def _describe(spec: dict) -> str:
    return f"{spec['name']} {spec['dtype']}{list(spec['shape'])}"


def check_io(graph: str, spec: dict, inputs: list[dict], outputs: list[dict]) -> None:
    """Compare a loaded graph's inputs/outputs ([{name, shape, dtype}]) with bundle.json's spec."""
    for kind, found in (("inputs", inputs), ("outputs", outputs)):
        expected = spec[kind]
        if [t["name"] for t in found] != [t["name"] for t in expected]:
            raise BundleError(f"{graph} graph {kind} {[t['name'] for t in found]} do not match bundle.json's "
                              f"{[t['name'] for t in expected]}")
        for f, e in zip(found, expected):
            if f["dtype"] != e["dtype"] or [_dim(d) for d in f["shape"]] != [_dim(d) for d in e["shape"]]:
                raise BundleError(f"{graph} graph {kind[:-1]} {_describe(f)} does not match "
                                  f"bundle.json's {_describe(e)}")


def _dim(d):
    return d if isinstance(d, int) else str(d)


ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int32)": "int32",
             "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(bool)": "bool"}


def ort_io(session) -> tuple[list[dict], list[dict]]:
    def conv(args):
        return [{"name": a.name, "shape": list(a.shape), "dtype": ORT_TYPES.get(a.type, a.type)} for a in args]

    return conv(session.get_inputs()), conv(session.get_outputs())
