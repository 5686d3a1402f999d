"""Several frames in one pass (Runtime.encode_batch / generate_batch / describe_batch): greedy
answers equal the one-by-one ones, rows stop at their own stop token, and the passes really run
batched where the backend batches (one vision call; one decoder call per step for all rows)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nanovla.data.scenes import generate
from nanovla.runtime import load_runtime
from nanovla.runtime.base import batch_decode_loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scenes(count: int, seed: int = 31) -> list[np.ndarray]:
    return [generate("eval", seed, i)[0] for i in range(count)]


# ------------------------------------------------------------------ the shared loop


def test_batch_decode_loop_stops_each_row_at_its_own_stop_token():
    """Row r emits tokens 10.., then stop token 0 after lengths[r] tokens; stopped rows are fed
    their stop token again and their later logits are ignored."""
    lengths = [3, 0, 5, 1]
    vocab = 20
    fed = []

    def logits_for(i):
        out = np.zeros((len(lengths), vocab), np.float32)
        for r, n in enumerate(lengths):
            out[r, 10 + i if i < n else 0] = 1.0
        return out

    def step(tokens, i):
        fed.append(tokens.copy())
        return logits_for(i + 1)

    out, stopped = batch_decode_loop(logits_for(0), step, lambda r, lg: int(np.argmax(lg)), {0}, 50)
    assert out == [[10, 11, 12], [], [10, 11, 12, 13, 14], [10]] and not stopped
    assert len(fed) == 5  # the longest row's 5 tokens, then its stop token ends the loop
    assert all(row[1] == 0 for row in fed)  # row 1 stopped at once: fed its stop token
    # the budget cuts every row; cancel stops the batch
    out, _ = batch_decode_loop(logits_for(0), step, lambda r, lg: int(np.argmax(lg)), {0}, 2)
    assert out == [[10, 11], [], [10, 11], [10]]
    out, stopped = batch_decode_loop(logits_for(0), step, lambda r, lg: int(np.argmax(lg)), {0}, 50,
                                     cancel=lambda: True)
    assert stopped and out == [[10], [], [10], [10]]


# ------------------------------------------------------------------ onnxruntime, the shipped int8 bundle


@pytest.fixture(scope="module")
def shipped():
    pytest.importorskip("onnxruntime")
    runtime = load_runtime(None, "auto", threads=1)
    assert runtime.backend == "onnxruntime"
    yield runtime
    runtime.close()


class Counting:
    """Wraps an onnxruntime session and counts its calls and the batch size of each."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def run(self, outputs, feed):
        self.batches.append(len(next(iter(feed.values()))))
        return self.session.run(outputs, feed)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_shipped_bundle_describe_batch_equals_one_by_one(shipped):
    frames = scenes(7)
    one_by_one = [shipped.describe(frame) for frame in frames]
    vision = shipped.sessions["vision"]
    shipped.sessions["vision"] = counting = Counting(vision)
    try:
        batched = shipped.describe_batch(frames[:4]) + shipped.describe_batch(frames[4:6]) + \
            shipped.describe_batch(frames[6:])
    finally:
        shipped.sessions["vision"] = vision
    assert counting.batches == [4, 2, 1]  # one vision call per pass
    assert [a.text for a in batched] == [a.text for a in one_by_one]
    assert [a.token_ids for a in batched] == [a.token_ids for a in one_by_one]
    assert len({len(a.token_ids) for a in one_by_one}) > 1  # the captions differ in length
    # the pass's timings: one latency and one encode for all its frames
    first = batched[:4]
    assert len({a.latency_ms for a in first}) == 1 and len({a.encode_ms for a in first}) == 1
    assert 0 < first[0].encode_ms < first[0].latency_ms


def test_shipped_bundle_batches_vision_exactly_and_decodes_int8_rows_one_by_one_by_default(shipped):
    """The int8 decoder quantizes activations per call over all rows, so "auto" keeps its rows
    apart (exact); "always" decodes them together in one call per step."""
    frames = scenes(3, seed=8)
    contexts = shipped.encode_batch(frames)
    for frame, context in zip(frames, contexts):
        assert np.array_equal(context.image_tokens, shipped.encode(frame).image_tokens)
    assert not shipped.decodes_rows_together(3)
    decode = shipped.sessions["decode"]
    shipped.batch_decode = "always"
    try:
        assert shipped.decodes_rows_together(3) and not shipped.decodes_rows_together(1)
        prefill = shipped.sessions["prefill"]
        shipped.sessions["prefill"] = counting = Counting(prefill)
        try:
            answers = shipped.describe_batch(frames)
        finally:
            shipped.sessions["prefill"] = prefill
        assert counting.batches == [3]  # one prefill call for the three rows
        for answer in answers:
            assert answer.text and not set(answer.token_ids) & shipped.stop_ids
            assert not answer.stopped
        stopped = shipped.generate_batch(shipped.encode_batch(frames), "describe the scene.", cancel=lambda: True)
        assert all(a.stopped and len(a.token_ids) <= 1 for a in stopped)
    finally:
        shipped.batch_decode = "auto"
    assert shipped.sessions["decode"] is decode


def test_generate_batch_refuses_what_generate_refuses(shipped):
    contexts = shipped.encode_batch(scenes(2))
    with pytest.raises(ValueError, match="max_new_tokens"):
        shipped.generate_batch(contexts, "describe the scene.", max_new_tokens=0)
    with pytest.raises(ValueError, match="empty question"):
        shipped.generate_batch(contexts, "  ")
    assert shipped.describe_batch([]) == [] and shipped.encode_batch([]) == []


def test_batched_bundle_runs_without_torch(tmp_path):
    from torch_free_helpers import torch_free_env

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = torch_free_env(str(tmp_path), env)
    script = textwrap.dedent("""
        import sys
        from nanovla.data.scenes import generate
        from nanovla.runtime import load_runtime
        rt = load_runtime(None, "auto", threads=1)
        rt.batch_decode = "always"
        answers = rt.describe_batch([generate("eval", 3, i)[0] for i in range(2)], max_new_tokens=8)
        assert len(answers) == 2 and all(a.text for a in answers)
        assert "torch" not in sys.modules or sys.modules["torch"] is None
    """)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]


# ------------------------------------------------------------------ float bundle, torch


def test_float_bundle_decodes_rows_together_with_one_by_one_answers(tmp_path_factory):
    """An fp32 bundle's rows are independent: "auto" batches the decoder, one call per step."""
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from export_helpers import quick_options, save_varied_checkpoint

    from nanovla.export.exporter import export_bundle

    root = tmp_path_factory.mktemp("batch_fp32")
    checkpoint = save_varied_checkpoint(str(root / "ckpt"), seed=3)
    bundle = str(root / "bundle")
    export_bundle(checkpoint, "onnx", bundle, quick_options(parity_scenes=2), log=lambda m: None)
    runtime = load_runtime(bundle, "onnxruntime", threads=1)
    frames = scenes(3, seed=4)
    assert runtime.decodes_rows_together(3)
    expected = [runtime.ask(frame, "what is here?", max_new_tokens=12).token_ids for frame in frames]
    got = runtime.ask_batch(frames, "what is here?", max_new_tokens=12)
    assert [a.token_ids for a in got] == expected
    runtime.batch_decode = "never"
    assert [a.token_ids for a in runtime.ask_batch(frames, "what is here?", max_new_tokens=12)] == expected
    runtime.close()


def test_torch_describe_batch_equals_one_by_one():
    pytest.importorskip("torch")
    runtime = load_runtime(None, "torch", threads=1)
    frames = scenes(3, seed=12)
    expected = [runtime.describe(frame) for frame in frames]
    assert runtime.decodes_rows_together(3)
    got = runtime.describe_batch(frames)
    assert [a.token_ids for a in got] == [a.token_ids for a in expected]
    assert len({len(a.token_ids) for a in expected}) > 1
    # the batch's contexts serve later questions like encode()'s
    context = runtime.encode_batch(frames[:2])[1]
    question = "how many objects are there?"
    assert runtime.generate(context, question).text == runtime.ask(frames[1], question).text
    runtime.close()
