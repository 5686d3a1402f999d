import numpy as np

from nanovla.data.language import (QA_TYPES, all_questions, caption, caption_mentions, normalize_answer,
                                   sample_questions)
from nanovla.data.scenes import COLORS, HELDOUT_PAIRS, KINDS, generate
from nanovla.evaluate import caption_counts, f1


def test_same_seed_same_scene_different_split_different_scene():
    a, sa = generate("train", 3, 5)
    b, sb = generate("train", 3, 5)
    c, sc = generate("eval", 3, 5)
    assert np.array_equal(a, b) and [o.name for o in sa.objects] == [o.name for o in sb.objects]
    assert not np.array_equal(a, c)
    assert a.shape == (480, 640, 3) and a.dtype == np.uint8


def test_vocabulary_size_and_object_counts():
    assert len(KINDS) >= 8 and len(COLORS) >= 8
    counts = [len(generate("train", 0, i)[1].objects) for i in range(60)]
    assert min(counts) == 0 and max(counts) >= 5


def test_heldout_pairs_only_in_heldout_split():
    for i in range(150):
        _, s = generate("train", 1, i)
        assert not {(o.color, o.kind) for o in s.objects} & HELDOUT_PAIRS
    for i in range(30):
        _, s = generate("heldout", 1, i)
        assert {(o.color, o.kind) for o in s.objects} & HELDOUT_PAIRS


def test_train_questions_never_mention_heldout_pairs():
    rng = np.random.default_rng(0)
    for i in range(40):
        _, s = generate("train", 2, i)
        for q in all_questions(s, rng, "train"):
            text = q["question"] + " " + q["answer"]
            assert not any(f"{c} {k}" in text for c, k in HELDOUT_PAIRS), text


def test_caption_names_every_object_with_colour_left_to_right():
    for i in range(30):
        _, s = generate("eval", 4, i)
        text = caption(s)
        mentions = caption_mentions(text)
        assert sorted(mentions) == sorted((o.color, o.kind) for o in s.objects)
        xs = [next(o.cx for o in s.objects if (o.color, o.kind) == m) for m in mentions]
        assert xs == sorted(xs)
        tp, n_pred, n_gold = caption_counts(text, [o.to_json() for o in s.objects])
        assert f1(tp, n_pred, n_gold)["f1"] == 1.0


def test_answers_follow_the_scene_graph():
    rng = np.random.default_rng(1)
    seen_types = set()
    for i in range(40):
        _, s = generate("train", 5, i)
        for q in all_questions(s, rng):
            seen_types.add(q["type"])
            if q["question"] == "how many objects are there?":
                assert q["answer"] == str(len(s.objects))
            if q["type"] == "left_right":
                a = next(o for o in s.objects if f"the {o.name} left" in q["question"])
                b = next(o for o in s.objects if q["question"].endswith(f"of the {o.name}?"))
                assert (a.cx < b.cx) == (q["answer"] == "left")
    assert seen_types == set(QA_TYPES)
    qs = sample_questions(generate("train", 5, 1)[1], rng, k=8)
    assert len(qs) <= 8 and len({q["type"] for q in qs}) >= min(len(qs), 3)


def test_bboxes_inside_frame():
    for i in range(20):
        _, s = generate("train", 6, i)
        for o in s.objects:
            x0, y0, x1, y1 = o.bbox
            assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480


def test_caption_f1_counts_missing_and_invented_objects():
    objects = [{"color": "red", "kind": "cube"}, {"color": "blue", "kind": "ball"}]
    tp, n_pred, n_gold = caption_counts("a red cube and a green cone.", objects)
    assert (tp, n_pred, n_gold) == (1, 2, 2)
    assert normalize_answer(" The Blue Ball. ") == "the blue ball"
