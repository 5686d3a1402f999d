"""The one sampler (nanovla.runtime.sampling): tests that fail when it ignores the temperature,
top-k or top-p, when seeds do not steer it, when a batch row differs from the 1-D call, or when
a backend draws its tokens elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from nanovla.runtime import sampling
from nanovla.runtime.sampling import Sampler, SamplingConfig, distribution, sample

LOGITS = np.array([2.0, 1.2, 0.9, 0.3, -0.4, -1.0, 0.5, 1.6])  # no ties; argmax 0


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def frequencies(logits: np.ndarray, n: int, temperature: float, top_k: int = 0, top_p: float = 1.0,
                seed: int = 0) -> np.ndarray:
    """Empirical distribution of n draws (one batched call: n identical rows)."""
    ids = sample(np.tile(logits, (n, 1)), temperature, top_k, top_p, np.random.default_rng(seed))
    return np.bincount(ids, minlength=logits.shape[-1]) / n


# ----------------------------------------------------------------------------- temperature

def test_temperature_zero_is_argmax_and_draws_nothing():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    batch = np.random.default_rng(1).normal(size=(16, 50))
    assert sample(LOGITS, 0.0, 0, 1.0, rng) == 0
    assert sample(batch, 0.0, 5, 0.5, rng).tolist() == np.argmax(batch, axis=1).tolist()
    assert rng.bit_generator.state == state  # greedy consumes no random numbers
    assert np.array_equal(distribution(LOGITS, 0.0), np.eye(len(LOGITS))[0])


def test_a_very_low_temperature_is_argmax():
    ids = [sample(LOGITS, 1e-3, 0, 1.0, np.random.default_rng(s)) for s in range(200)]
    assert set(ids) == {0}
    # ... and not at temperature 1, where the second logit (0.4 lower) wins often
    assert len(set(frequencies(LOGITS, 2000, 1.0).nonzero()[0])) > 3


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_draws_follow_the_softmax_at_the_temperature(temperature):
    expected = softmax(LOGITS / temperature)
    n = 100_000  # the standard error of each frequency is <= 0.0016
    got = frequencies(LOGITS, n, temperature, seed=11)
    assert np.max(np.abs(got - expected)) < 0.008, (got, expected)
    chi2 = n * np.sum((got - expected) ** 2 / expected)
    assert chi2 < 30, chi2  # 7 degrees of freedom: p(chi2 > 30) < 1e-4
    # one-at-a-time calls draw from the same distribution
    rng = np.random.default_rng(12)
    single = np.bincount([sample(LOGITS, temperature, 0, 1.0, rng) for _ in range(20_000)], minlength=len(LOGITS))
    assert np.max(np.abs(single / 20_000 - expected)) < 0.02


def test_the_temperature_changes_the_distribution():
    """The test above would fail for a sampler that ignores the temperature: the targets differ."""
    cold, hot = softmax(LOGITS / 0.5), softmax(LOGITS / 2.0)
    assert np.max(np.abs(cold - softmax(LOGITS))) > 0.1 and np.max(np.abs(hot - softmax(LOGITS))) > 0.1
    assert np.max(np.abs(frequencies(LOGITS, 50_000, 0.5) - frequencies(LOGITS, 50_000, 2.0))) > 0.2


# ----------------------------------------------------------------------------- top-k

@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_never_leaves_the_k_largest(k):
    batch = np.random.default_rng(k).normal(size=(64, 40)) * 3
    top = np.argsort(-batch, axis=1)[:, :k]
    rng = np.random.default_rng(100 + k)
    for _ in range(50):
        ids = sample(batch, 1.5, k, 1.0, rng)
        assert all(i in row for i, row in zip(ids, top))
    if k == 1:  # top_k 1 is argmax at any temperature
        assert sample(batch, 5.0, 1, 1.0, rng).tolist() == top[:, 0].tolist()


def test_top_k_renormalises_over_the_k_largest():
    expected = np.zeros(len(LOGITS))
    keep = np.argsort(-LOGITS)[:3]  # tokens 0, 7, 1
    expected[keep] = softmax(LOGITS[keep])
    got = frequencies(LOGITS, 100_000, 1.0, top_k=3, seed=3)
    assert np.max(np.abs(got - expected)) < 0.01
    assert np.allclose(distribution(LOGITS, 1.0, top_k=3), expected)
    assert np.allclose(distribution(LOGITS, 1.0, top_k=len(LOGITS) + 5), softmax(LOGITS))  # k >= V: off


# ----------------------------------------------------------------------------- top-p

PROBS = np.array([0.05, 0.4, 0.1, 0.3, 0.15])  # ranked: 1 (0.4), 3 (0.3), 4 (0.15), 2 (0.1), 0 (0.05)


@pytest.mark.parametrize("top_p, kept", [(0.3, {1}), (0.65, {1, 3}), (0.69, {1, 3}), (0.72, {1, 3, 4}),
                                         (0.9, {1, 3, 4, 2}), (0.99, {0, 1, 2, 3, 4})])
def test_top_p_keeps_exactly_the_smallest_set_reaching_p(top_p, kept):
    logits = np.log(PROBS)
    expected = np.zeros(len(PROBS))
    expected[list(kept)] = PROBS[list(kept)] / PROBS[list(kept)].sum()
    assert np.allclose(distribution(logits, 1.0, top_p=top_p), expected)
    got = frequencies(logits, 100_000, 1.0, top_p=top_p, seed=int(top_p * 100))
    assert set(np.nonzero(got)[0]) == kept  # never a token outside the set ...
    assert np.max(np.abs(got - expected)) < 0.01  # ... and each in its renormalised share


def test_top_p_matches_its_definition_on_random_logits():
    rng = np.random.default_rng(5)
    for _ in range(200):
        logits = rng.normal(size=30) * 2
        top_p = rng.uniform(0.05, 0.98)
        probs = softmax(logits)
        order = np.argsort(-probs)
        mass = np.cumsum(probs[order])
        size = int(np.searchsorted(mass, top_p) + 1)  # the smallest prefix whose mass reaches top_p
        if abs(mass[size - 1] - top_p) < 1e-9 or (size > 1 and abs(mass[size - 2] - top_p) < 1e-9):
            continue  # on the boundary to rounding: either answer is right
        kept = set(np.nonzero(distribution(logits, 1.0, top_p=top_p))[0])
        assert kept == set(order[:size].tolist())


def test_top_k_then_top_p():
    """top-k first, then top-p over the renormalised k: of 0.4/0.3/0.15 (k=3), 0.85 of mass;
    renormalised 0.47/0.35/0.18, so top_p 0.8 keeps two."""
    d = distribution(np.log(PROBS), 1.0, top_k=3, top_p=0.8)
    assert set(np.nonzero(d)[0]) == {1, 3} and np.isclose(d[1], 0.4 / 0.7)


# ----------------------------------------------------------------------------- seeds and batches

def test_seeds_steer_the_draws():
    def draws(seed):
        sampler = Sampler(SamplingConfig(temperature=1.0, seed=seed))
        return [sampler(LOGITS) for _ in range(64)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)
    assert draws(None) != draws(None)  # no seed: fresh entropy each time


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 5, 1.0),
                                                        (1.3, 0, 0.8), (2.0, 10, 0.5)])
def test_a_batch_row_is_drawn_as_the_1d_call_draws_it(temperature, top_k, top_p):
    batch = np.random.default_rng(7).normal(size=(32, 50)) * 2
    batched = sample(batch, temperature, top_k, top_p, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    single = [sample(row, temperature, top_k, top_p, rng) for row in batch]
    assert isinstance(batched, np.ndarray) and batched.shape == (32,) and batched.dtype == np.int64
    assert all(isinstance(i, int) for i in single)
    assert batched.tolist() == single


def test_float32_logits_and_bad_shapes():
    assert sample(LOGITS.astype(np.float32), 1.0, 0, 1.0, np.random.default_rng(0)) in range(len(LOGITS))
    with pytest.raises(ValueError, match="shape"):
        sample(np.zeros((2, 3, 4)), 1.0, 0, 1.0, np.random.default_rng(0))


@pytest.mark.parametrize("field, value", [("max_new_tokens", 0), ("temperature", -0.1), ("top_k", -1),
                                          ("top_p", 0.0), ("top_p", 1.5)])
def test_the_config_is_validated(field, value):
    with pytest.raises(ValueError, match=field):
        Sampler(SamplingConfig(**{field: value}))


# ----------------------------------------------------------------------------- every backend draws here

FORCED = 17  # a token the fake sampler always picks


@pytest.fixture
def forced_sampler(monkeypatch):
    calls = []

    def fake(logits, temperature, top_k, top_p, rng):
        calls.append((np.asarray(logits).shape, temperature, top_k, top_p))
        return FORCED

    monkeypatch.setattr(sampling, "sample", fake)
    return calls


def test_the_torch_engine_draws_from_the_one_sampler(forced_sampler):
    import torch

    from nanovla.runtime.engine import Engine
    from nanovla.runtime.engine import SamplingConfig as EngineSamplingConfig
    from tiny_models import build_tiny_model

    assert EngineSamplingConfig is SamplingConfig  # re-exported, not a copy
    model, tok = build_tiny_model(seed=3)
    assert FORCED not in tok.special_ids().values()
    engine = Engine(model, tok)
    ctx = engine.encode(torch.rand(1, 3, 64, 96))
    ids = engine.generate_ids(ctx, tok.question_suffix("what colour is the cube?"),
                              SamplingConfig(max_new_tokens=4, temperature=0.8, top_k=7, top_p=0.9, seed=1))
    assert ids == [FORCED] * 4
    assert forced_sampler == [((tok.vocab_size,), 0.8, 7, 0.9)] * 4  # numpy logits of one sequence


def test_the_onnxruntime_backend_draws_from_the_one_sampler(forced_sampler):
    from nanovla.model.paths import default_bundle_dir
    from nanovla.runtime import load_runtime

    runtime = load_runtime(default_bundle_dir(), backend="onnxruntime", threads=1)
    context = runtime.encode(np.zeros((120, 160, 3), np.uint8))
    answer = runtime.generate(context, "what is on the table?", max_new_tokens=3, temperature=0.5, top_k=4,
                              top_p=0.7, seed=2)
    assert answer.token_ids == [FORCED] * 3
    vocab = runtime.bundle["model"]["vocab_size"]
    assert forced_sampler == [((vocab,), 0.5, 4, 0.7)] * 3
    with pytest.raises(ValueError, match="top_p"):  # validated as on the torch path
        runtime.generate(context, "what is on the table?", top_p=0.0)


def test_the_tensorrt_backend_uses_the_one_sampler():
    """No TensorRT here: the module imports without it; its decode loop samples with Sampler."""
    from nanovla.runtime import trt_backend

    assert trt_backend.Sampler is sampling.Sampler
