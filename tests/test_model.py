import pytest
import torch

from tiny_models import build_tiny_model
from nanovla.runtime.engine import Engine, SamplingConfig
from nanovla.runtime.prompts import DESCRIBE_PROMPT


def sharpen(model):
    """Random tiny models greedily echo their input; an untied, larger head makes outputs vary."""
    with torch.no_grad():
        head = torch.nn.Linear(model.cfg.decoder.n_embd, model.cfg.decoder.vocab_size, bias=False)
        torch.nn.init.normal_(head.weight, std=1.0, generator=torch.Generator().manual_seed(0))
        model.decoder.lm_head = head
    return model


def test_yolo_neck_gives_three_spatial_levels():
    model, _ = build_tiny_model()
    feats = model.vision(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape[2:]) for f in feats] == [(8, 12), (4, 6), (2, 3)]  # strides 8/16/32
    assert model.vision.channels == [f.shape[1] for f in feats]
    tokens = model.encode_image(torch.rand(2, 3, 64, 96))
    assert tokens.shape == (2, model.image_tokens, model.cfg.decoder.n_embd) and model.image_tokens == 6


def test_perceiver_resampler_token_count():
    model, _ = build_tiny_model(resampler="perceiver")
    assert model.encode_image(torch.rand(1, 3, 64, 96)).shape == (1, 6, 64)


def test_sincos_positions_tell_the_grid_cells_apart():
    from nanovla.model.config import ProjectorConfig
    from nanovla.model.projector import Projector

    same = [torch.ones(1, 4, 4, 6), torch.ones(1, 8, 2, 3)]  # one feature everywhere, two levels
    codes = {}
    for positions in ("learned", "sincos"):
        torch.manual_seed(0)
        cfg = ProjectorConfig(grid=(2, 3), width=32, positions=positions)
        proj = Projector(cfg, [4, 8], [(4, 6), (2, 3)], n_embd=16)
        assert set(proj.state_dict()) == {"pos", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
                                          "resampler.norm.weight", "resampler.norm.bias"}  # same checkpoint keys
        codes[positions] = proj(same)[0]
    # learned positions start at zero: every cell of a uniform image gives the same token
    assert torch.allclose(codes["learned"], codes["learned"][:1].expand(6, -1))
    # the fixed code makes all six cells distinct, each row and column included
    assert torch.cdist(codes["sincos"], codes["sincos"]).add(torch.eye(6)).min() > 1e-3


def test_sincos_positions_need_the_grid_resampler():
    from nanovla.model.config import ModelConfig, ProjectorConfig

    with pytest.raises(ValueError, match="sincos"):
        ModelConfig(projector=ProjectorConfig(resampler="perceiver", positions="sincos")).validate()
    with pytest.raises(ValueError, match="unknown projector positions"):
        ModelConfig(projector=ProjectorConfig(positions="rope")).validate()


@pytest.mark.parametrize("resampler", ["grid", "perceiver"])
def test_cached_and_uncached_decoding_agree(resampler):
    model, tok = build_tiny_model(resampler=resampler, seed=3)
    sharpen(model)
    engine = Engine(model, tok)
    ctx = engine.encode(torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)))
    for q in ["how many cubes are there?", "is there a red ball?"]:
        cached = engine.generate_ids(ctx, tok.question_suffix(q), SamplingConfig(max_new_tokens=12))
        uncached = engine.generate_uncached(ctx, q, 12)
        assert cached == uncached
        assert len(set(cached)) > 1  # a real sequence, not one repeated token


def test_kv_cache_logits_equal_full_forward():
    """Prefill + one-token steps through the cache give the full forward's logits at every position."""
    model, tok = build_tiny_model(seed=2)
    image = model.encode_image(torch.rand(1, 3, 64, 96))
    text = torch.randint(10, tok.vocab_size, (1, 14), generator=torch.Generator().manual_seed(1))
    ids = torch.cat([torch.tensor([tok.image_prefix(model.image_tokens)]), text], dim=1)
    with torch.no_grad():
        full, _ = model.decoder(model.embed(ids, image))
        split = ids.shape[1] - 6
        logits, cache = model.decoder(model.embed(ids[:, :split], image))
        steps = [logits[:, -1]]
        for pos in range(split, ids.shape[1]):
            logits, cache = model.decoder(model.embed(ids[:, pos:pos + 1], None), past=cache, start_pos=pos)
            steps.append(logits[:, -1])
        # a chunk of several tokens on top of a cache (how questions are prefilled)
        chunk, _ = model.decoder(model.embed(ids[:, split:], None), past=model.decoder(
            model.embed(ids[:, :split], image))[1], start_pos=split)
    assert torch.allclose(torch.stack(steps[:-1], 1), full[:, split - 1:-1], atol=1e-5)
    assert torch.allclose(chunk, full[:, split:], atol=1e-5)


def test_image_context_reused_across_questions_is_not_mutated():
    model, tok = build_tiny_model(seed=4)
    sharpen(model)
    engine = Engine(model, tok)
    ctx = engine.encode(torch.rand(1, 3, 64, 96))
    first = engine.ask(ctx, "what colour is the cube?")
    engine.ask(ctx, "how many objects are there?")
    assert engine.ask(ctx, "what colour is the cube?") == first


def test_sampling_is_seeded_and_temperature_zero_is_greedy():
    model, tok = build_tiny_model(seed=5)
    sharpen(model)
    engine = Engine(model, tok)
    ctx = engine.encode(torch.rand(1, 3, 64, 96))
    q = tok.question_suffix(DESCRIBE_PROMPT)
    s = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    assert engine.generate_ids(ctx, q, s) == engine.generate_ids(ctx, q, s)
    greedy = SamplingConfig(max_new_tokens=10)
    assert engine.generate_ids(ctx, q, greedy) == engine.generate_ids(ctx, q, greedy)
    with pytest.raises(ValueError, match="top_p"):
        engine.generate_ids(ctx, q, SamplingConfig(top_p=0))


def test_streaming_callback_sees_every_token_and_can_stop():
    model, tok = build_tiny_model(seed=6)
    sharpen(model)
    engine = Engine(model, tok)
    ctx = engine.encode(torch.rand(1, 3, 64, 96))
    seen = []
    ids = engine.generate_ids(ctx, tok.question_suffix(DESCRIBE_PROMPT), SamplingConfig(max_new_tokens=8),
                              on_token=lambda t, text: seen.append(t))
    assert seen == ids
    stopped = engine.generate_ids(ctx, tok.question_suffix(DESCRIBE_PROMPT), SamplingConfig(max_new_tokens=8),
                                  on_token=lambda t, text: len(text) < 1 and None or False)
    assert len(stopped) == 1


def test_loss_only_on_assistant_tokens():
    model, tok = build_tiny_model()
    r = tok.render([{"role": "user", "content": "how many cubes are there?"}, {"role": "assistant", "content": "2"}],
                   image_tokens=model.image_tokens)
    ids = torch.tensor([r.ids])
    mask = torch.tensor([r.mask])
    pixels = torch.rand(1, 3, 64, 96)
    loss = model(ids, mask, pixels)
    # changing what the user said (not the answer) changes the loss, but the loss is computed
    # only on the answer: zero mask on the answer -> nothing to learn from
    assert torch.isfinite(loss)
    logits, _ = model.decoder(model.embed(ids, model.encode_image(pixels)))
    targets = ids[0, 1:]
    sup = mask[0, 1:].bool()
    manual = torch.nn.functional.cross_entropy(logits[0, :-1][sup], targets[sup])
    assert torch.allclose(loss, manual, atol=1e-5)
    with pytest.raises(ValueError, match="placeholders"):
        model(ids[:, 3:], mask[:, 3:], pixels)


def test_tiny_model_overfits_a_handful_of_scenes():
    """Trained on 4 scenes with 4 different answers, the model answers each from its image."""
    from nanovla.data.scenes import generate
    from nanovla.runtime.preprocess import preprocess

    torch.manual_seed(0)
    model, tok = build_tiny_model(seed=0)
    model.train()
    scenes, counts, i = [], set(), 0
    while len(scenes) < 4:  # four different answers, so the image must be used
        image, scene = generate("train", 11, i)
        i += 1
        if len(scene.objects) not in counts:
            counts.add(len(scene.objects))
            scenes.append((image, scene))
    pixels = torch.cat([torch.from_numpy(preprocess(img, 64, 96)) for img, _ in scenes])
    # BatchNorm statistics of these images, then frozen: training and answering see one encoder
    for m in model.vision.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass gives the exact batch statistics
    with torch.no_grad():
        model.vision(pixels)
    model.vision.eval()
    model.vision.requires_grad_(False)  # the projector and decoder must learn to read the features
    rows = []
    for k, (_, scene) in enumerate(scenes):
        turns = [{"role": "user", "content": "how many objects are there?"},
                 {"role": "assistant", "content": str(len(scene.objects))}]
        rows.append(tok.render(turns, model.image_tokens))
    T = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), T), tok.pad_id)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        mask[i, : len(r.mask)] = torch.tensor(r.mask)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(80):
        loss = model(ids, mask, pixels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    model.eval()
    engine = Engine(model, tok)
    answers = [engine.ask(engine.encode(pixels[i:i + 1]), "how many objects are there?") for i in range(len(scenes))]
    assert answers == [str(len(s.objects)) for _, s in scenes]
