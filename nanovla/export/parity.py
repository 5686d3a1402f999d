"""Parity measured at export time and written into bundle.json.

fp32 ONNX vs PyTorch: max abs error of the vision tokens and of the logits (prefill and decode
graphs, fed the same inputs as the eager model), and greedy-token agreement of `describe` over
N eval scenes. Quantized (int8/fp16) vs fp32 ONNX: eval exact match and caption F1 on the same
scenes and questions. Outside TOLERANCES the export fails unless --allow-drift.
"""

from __future__ import annotations

import numpy as np
import torch

from ..evaluation.scenes import evaluate, generated_rows
from ..runtime.preprocess import preprocess
from ..runtime.prompts import DESCRIBE_PROMPT
from ..runtime.torch_backend import TorchRuntime

# the stated tolerances (bundle.json records them beside the measurements)
TOLERANCES = {
    "fp32": {"vision_max_abs": 1e-3,  # image tokens are O(1)
             "logits_max_abs": 5e-3,  # logits are O(10); fp32 reassociation gives ~1e-5
             "token_agreement_min": 0.98},  # fraction of scenes whose greedy describe tokens are identical
    "int8": {"exact_match_drop_max": 0.02, "caption_f1_drop_max": 0.03},
    "fp16": {"exact_match_drop_max": 0.01, "caption_f1_drop_max": 0.01},
}
TENSOR_SCENES = 8  # scenes for the tensor-level comparison (the token comparison uses all N)


def eval_rows(count: int, seed: int, questions: int) -> list[dict]:
    return list(generated_rows("eval", seed, count, questions=questions))


def fp32_vs_torch(model, tokenizer, ort_runtime, rows: list[dict], max_new_tokens: int = 64) -> dict:
    """Tensor errors on the first TENSOR_SCENES rows, greedy-token agreement on all rows."""
    torch_runtime = TorchRuntime.from_model(model, tokenizer)
    cfg = model.cfg
    sessions = ort_runtime.sessions
    vision_err = logits_err = 0.0
    vision_ref = logits_ref = 0.0
    prefix = tokenizer.image_prefix(cfg.image_tokens)
    question = tokenizer.question_suffix(DESCRIBE_PROMPT)
    for row in rows[:TENSOR_SCENES]:
        pixels = preprocess(row["image"], cfg.vision.image_height, cfg.vision.image_width)
        with torch.inference_mode():
            tokens = model.encode_image(torch.from_numpy(pixels))
            prefill_logits, cache = model.prefill(torch.tensor([prefix]), tokens)
            decode_logits, _ = model.prefill(torch.tensor([question]), None, past=cache, start_pos=len(prefix))
        onnx_tokens = sessions["vision"].run(None, {"pixels": pixels})[0]
        vision_err = max(vision_err, float(np.abs(onnx_tokens - tokens.numpy()).max()))
        vision_ref = max(vision_ref, float(np.abs(tokens.numpy()).max()))
        # decoder graphs get the eager model's image tokens, so their error is their own
        out = sessions["prefill"].run(None, {"input_ids": np.array([prefix], np.int32), "image_tokens": tokens.numpy()})
        step = decode_through_graph(sessions["decode"], out[1:], len(prefix), question)
        for mine, ref in ((out[0], prefill_logits), (step, decode_logits)):
            logits_err = max(logits_err, float(np.abs(mine - ref.numpy()).max()))
            logits_ref = max(logits_ref, float(np.abs(ref.numpy()).max()))
    identical = tokens_same = tokens_total = 0
    disagreements = []
    for i, row in enumerate(rows):
        reference = torch_runtime.describe(row["image"], max_new_tokens=max_new_tokens).token_ids
        mine = ort_runtime.describe(row["image"], max_new_tokens=max_new_tokens).token_ids
        identical += reference == mine
        n = max(len(reference), len(mine))
        tokens_same += sum(a == b for a, b in zip(reference, mine))
        tokens_total += n
        if reference != mine and len(disagreements) < 5:
            disagreements.append({"scene": i, "torch": tokenizer.decode(reference), "onnx": tokenizer.decode(mine)})
    tol = TOLERANCES["fp32"]
    report = {
        "scenes": len(rows),
        "tensor_scenes": min(TENSOR_SCENES, len(rows)),
        "vision_max_abs_error": vision_err, "vision_max_abs_reference": vision_ref,
        "logits_max_abs_error": logits_err, "logits_max_abs_reference": logits_ref,
        "greedy_token_agreement": identical / len(rows),  # scenes with identical token sequences
        "greedy_token_agreement_per_token": tokens_same / tokens_total if tokens_total else 1.0,
        "disagreements": disagreements,
        "tolerance": tol,
    }
    failures = []
    if vision_err > tol["vision_max_abs"]:
        failures.append(f"vision max abs error {vision_err:.2e} > {tol['vision_max_abs']:.0e}")
    if logits_err > tol["logits_max_abs"]:
        failures.append(f"logits max abs error {logits_err:.2e} > {tol['logits_max_abs']:.0e}")
    if report["greedy_token_agreement"] < tol["token_agreement_min"]:
        failures.append(f"greedy tokens agree on {report['greedy_token_agreement']:.1%} of scenes "
                        f"< {tol['token_agreement_min']:.0%}")
    report["passed"], report["failures"] = not failures, failures
    return report


def decode_through_graph(session, prefix_cache: list[np.ndarray], prefix_len: int, ids: list[int],
                         spare: int = 3) -> np.ndarray:
    """Feed ids one at a time through the decode graph (plain run(), no IO binding, a cache with
    `spare` unused masked positions); logits after the last id."""
    names = [i.name for i in session.get_inputs()][2:]
    capacity = prefix_len + len(ids) + spare
    buffers = []
    for kv in prefix_cache:
        buf = np.zeros(kv.shape[:2] + (capacity,) + kv.shape[3:], kv.dtype)
        buf[:, :, :prefix_len] = kv
        buffers.append(buf)
    for pos, token in enumerate(ids, prefix_len):
        feed = {"input_ids": np.array([[token]], np.int32), "past_length": np.array([pos], np.int32)}
        feed.update(zip(names, buffers))
        out = session.run(None, feed)
        for buf, new in zip(buffers, out[1:]):
            buf[:, :, pos] = new[:, :, 0]
    return out[0]


def accuracy(runtime, rows: list[dict]) -> dict:
    metrics = evaluate(runtime, rows)
    return {"exact_match": metrics["exact_match"], "caption_f1": metrics["caption"]["f1"],
            "questions": metrics["questions"], "images": metrics["images"]}


def quantized_vs_fp32(precision: str, fp32_runtime, quantized_runtime, rows: list[dict]) -> dict:
    reference, mine = accuracy(fp32_runtime, rows), accuracy(quantized_runtime, rows)
    vision_err = 0.0
    if not hasattr(quantized_runtime, "sessions"):  # TensorRT: no per-graph sessions to compare tensors
        rows_for_tensors = []
    else:
        rows_for_tensors = rows[:TENSOR_SCENES]
    for row in rows_for_tensors:
        pixels = preprocess(row["image"], fp32_runtime.image_height, fp32_runtime.image_width)
        a = fp32_runtime.sessions["vision"].run(None, {"pixels": pixels})[0]
        b = quantized_runtime.sessions["vision"].run(None, {"pixels": pixels.astype(quantized_runtime.vision_dtype)})[0]
        vision_err = max(vision_err, float(np.abs(a - b.astype(np.float32)).max()))
    tol = TOLERANCES[precision]
    report = {"scenes": len(rows), "fp32": reference, precision: mine,
              "exact_match_drop": reference["exact_match"] - mine["exact_match"],
              "caption_f1_drop": reference["caption_f1"] - mine["caption_f1"],
              "vision_max_abs_error_vs_fp32": vision_err, "tolerance": tol}
    failures = []
    if report["exact_match_drop"] > tol["exact_match_drop_max"]:
        failures.append(f"{precision} exact match {mine['exact_match']:.3f} is {report['exact_match_drop']:.3f} "
                        f"below fp32's {reference['exact_match']:.3f} (allowed {tol['exact_match_drop_max']})")
    if report["caption_f1_drop"] > tol["caption_f1_drop_max"]:
        failures.append(f"{precision} caption F1 {mine['caption_f1']:.3f} is {report['caption_f1_drop']:.3f} "
                        f"below fp32's {reference['caption_f1']:.3f} (allowed {tol['caption_f1_drop_max']})")
    report["passed"], report["failures"] = not failures, failures
    return report
