"""Every data format loads from disk; missing/corrupt images are skipped and counted; the packed
source mixture is balanced by answer tokens and resumes at its saved data position."""

from __future__ import annotations

import pytest

from data_helpers import make_coco, make_gqa, make_hf, make_llava, make_vqa

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return {
        "llava": (make_llava(str(root / "llava")), str(root / "llava" / "images")),
        "llava_jsonl": (make_llava(str(root / "llavaj"), jsonl=True), str(root / "llavaj" / "images")),
        "coco": (make_coco(str(root / "coco")), ""),
        "vqa": (make_vqa(str(root / "vqa")), ""),
        "gqa": (make_gqa(str(root / "gqa")), str(root / "gqa" / "images")),
        "parquet": (make_hf(str(root / "parquet")), ""),
        "arrow": (make_hf(str(root / "arrow"), kind="arrow"), ""),
    }


EXPECTED = {  # format, records, unreadable images (one missing + one corrupt where files are used)
    "llava": ("llava", 9, 2), "llava_jsonl": ("llava", 9, 2), "coco": ("coco", 6, 2), "vqa": ("vqa", 6, 2),
    "gqa": ("gqa", 6, 2), "parquet": ("hf", 6, 1), "arrow": ("hf", 6, 1),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_format_loads(datasets, name):
    from nanovla.data.formats import load_source

    path, images = datasets[name]
    source = load_source(path, images=images)
    summary = source.summary(check_images=True)
    fmt, n, bad = EXPECTED[name]
    assert (summary["format"], summary["records"], summary["unreadable_images"]) == (fmt, n, bad)
    first = source.records[0]
    assert first.turns[0]["role"] == "user" and first.turns[1]["role"] == "assistant"
    assert all("<image>" not in t["content"] for r in source.records for t in r.turns)


def test_llava_multi_turn_text_only_and_bad_rows(datasets):
    from nanovla.data.formats import load_source

    source = load_source(*datasets["llava"][:1], images=datasets["llava"][1])
    assert source.skipped_rows == 1  # the row with no question
    assert len(source.records[0].turns) == 4
    assert source.records[0].turns[0]["content"] == "Describe the picture."
    assert source.records[-1].image is None  # the text-only row


def test_vqa_answers_and_embedded_bytes(datasets):
    from nanovla.data.formats import load_source, record_image

    vqa = load_source(datasets["vqa"][0])
    assert len(vqa.records[0].answers) == 10 and vqa.records[0].meta["answer_type"] == "number"
    hf = load_source(datasets["parquet"][0])
    assert isinstance(hf.records[0].image, bytes) and record_image(hf.records[0]).shape == (96, 128, 3)


def test_unknown_and_bad_paths_are_clear(tmp_path):
    from nanovla.data.formats import load_source

    with pytest.raises(ValueError, match="no such file"):
        load_source(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_source(str(bad), "llava")
    with pytest.raises(ValueError, match="unknown data format"):
        load_source(str(bad), "webdataset")


def _mixture(datasets, tokenizer, seed=0, pack=True, max_len=96):
    from nanovla.data.formats import load_source
    from nanovla.data.packing import SourceMixture

    sources = [(load_source(datasets["llava"][0], images=datasets["llava"][1]), 1.0),
               (load_source(datasets["vqa"][0]), 1.0)]
    return SourceMixture(sources, tokenizer, image_tokens=6, max_len=max_len, height=32, width=48, seed=seed,
                         pack=pack)


@pytest.fixture(scope="module")
def tokenizer():
    from tiny_models import tiny_tokenizer

    return tiny_tokenizer()


def test_mixture_balances_answer_tokens_and_packs(datasets, tokenizer):
    mixture = _mixture(datasets, tokenizer)
    # llava answers are long captions, VQA answers one token: equal token weights -> VQA rows dominate
    assert mixture.mean_answer_tokens[0] > 10 * mixture.mean_answer_tokens[1]
    assert mixture.probs[1] > 0.9
    rows = mixture.plan(0, 4)
    assert all(sum(len(p.ids) for p in row) <= 96 for row in rows)
    assert max(len(row) for row in rows) > 1  # short VQA examples are packed several to a row
    ids, mask, pixels = mixture.materialize(rows, tokenizer.pad_id)
    n_placeholders = int((ids == tokenizer.image_id).sum())
    assert pixels is not None and n_placeholders == pixels.shape[0] * 6 and pixels.shape[1:] == (3, 32, 48)
    unpacked = _mixture(datasets, tokenizer, pack=False).plan(0, 4)
    assert all(len(row) == 1 for row in unpacked)


def test_missing_and_corrupt_images_are_skipped_and_counted(datasets, tokenizer):
    mixture = _mixture(datasets, tokenizer)
    for step in range(6):
        ids, mask, pixels = mixture.materialize(mixture.plan(step, 4), tokenizer.pad_id)
        n = 0 if pixels is None else pixels.shape[0]
        assert int((ids == tokenizer.image_id).sum()) == n * 6  # placeholders only where an image was read
    assert mixture.skipped_images > 0


def test_data_position_resumes_exactly(datasets, tokenizer):
    a = _mixture(datasets, tokenizer, seed=3)
    for step in range(3):
        a.plan(step, 4)
    state = a.state()
    expected = [[(p.source, p.index) for p in row] for row in a.plan(3, 4)]
    b = _mixture(datasets, tokenizer, seed=3)
    b.load_state(state)
    assert [[(p.source, p.index) for p in row] for row in b.plan(3, 4)] == expected
    # the plan of a global batch is what every rank slices: 2 x 2 rows == 4 rows
    c = _mixture(datasets, tokenizer, seed=3)
    c.load_state(state)
    rows = c.plan(3, 4)
    assert [[(p.source, p.index) for p in r] for r in rows[:2] + rows[2:]] == expected
