import numpy as np

from nanovla.data.language import QA_TYPES, all_questions, caption, caption_mentions, normalize_answer, sample_questions
from nanovla.data.scenes import COLORS, HELDOUT_PAIRS, KINDS, generate
from nanovla.evaluation.scenes import caption_counts, f1


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


def test_type_weights_draw_the_favoured_question_type_more_often():
    def near_far_share(weights):
        rng, n, hits = np.random.default_rng(3), 0, 0
        for i in range(30):
            _, s = generate("train", 6, i)
            for _ in range(5):
                qs = sample_questions(s, rng, "train", k=3, type_weights=weights)
                assert len({q["question"] for q in qs}) == len(qs)  # no question twice
                n, hits = n + len(qs), hits + sum(q["type"] == "near_far" for q in qs)
        return hits / n
    plain, favoured = near_far_share(None), near_far_share({"near_far": 8.0})
    assert favoured > 2 * plain and favoured > 0.3, (plain, favoured)
    assert near_far_share({"near_far": 0.0}) == 0.0


def test_text_turns_may_name_heldout_pairs_only_when_asked():
    from nanovla.data.dataset import renamed, text_example

    rng = np.random.default_rng(4)
    named_heldout = {False: 0, True: 0}
    for i in range(60):
        _, s = generate("train", 7, i)
        r = renamed(s, rng)
        assert [(o.x, o.y, o.bbox) for o in r.objects] == [(o.x, o.y, o.bbox) for o in s.objects]
        assert len({o.name for o in r.objects}) == len(r.objects)  # pairs stay distinct
        for all_pairs in (False, True):
            text = " ".join(t["content"] for t in text_example(s, rng, "train", all_pairs))
            named_heldout[all_pairs] += any(f"{c} {k}" in text for c, k in HELDOUT_PAIRS)
    assert named_heldout[False] == 0 and named_heldout[True] > 0, named_heldout


def test_render_cache_serves_a_smaller_count_from_a_larger_cache(tmp_path):
    from nanovla.data.dataset import render_cache

    big = render_cache("train", 4, 6, 24, 32, str(tmp_path), workers=1, log=lambda m: None)
    small = render_cache("train", 4, 4, 24, 32, str(tmp_path), workers=1, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-seed4-n6-24x32.jsonl", "train-seed4-n6-24x32.npy"]
    assert len(small) == 4 and np.array_equal(small.images, big.images[:4])
    assert [o.name for s in small.scenes for o in s.objects] == [o.name for s in big.scenes[:4] for o in s.objects]
    other = render_cache("train", 5, 4, 24, 32, str(tmp_path), workers=1, log=lambda m: None)  # another seed: rendered
    assert len(other) == 4 and (tmp_path / "train-seed5-n4-24x32.npy").is_file()


def test_text_turns_ask_only_what_the_caption_words_answer():
    """A text-only nearer/farther question needs the two objects' depth words to differ."""
    from nanovla.data.dataset import text_example
    from nanovla.data.language import depth_word

    rng = np.random.default_rng(4)
    asked = same_word_pairs_in_scenes = 0
    for i in range(300):
        s = generate("train", 5, i)[1]
        by_name = {o.name: o for o in s.objects}
        words = {depth_word(o) for o in s.objects}
        same_word_pairs_in_scenes += len(s.objects) > 1 and len(words) == 1
        turns = text_example(s, rng, "train")
        question = turns[0]["content"]
        if "nearer or farther" not in question:
            continue
        asked += 1
        a, b = question.split("is the ")[1].split(" nearer or farther than the ")
        assert depth_word(by_name[a]) != depth_word(by_name[b.rstrip("?")]), question
    assert asked >= 5 and same_word_pairs_in_scenes >= 20  # the filter had something to filter


def test_caption_place_accuracy_compares_objects_named_once_in_both():
    from nanovla.data.language import caption_places
    from nanovla.evaluation.scenes import place_counts

    reference = "a red cube on the left at the back, a blue ball in the middle at the front and a red cube on the right at the front."
    assert caption_places(reference)[("blue", "ball")] == ["in the middle at the front"]
    assert len(caption_places(reference)[("red", "cube")]) == 2
    # the ball's place agrees; the red cube is named twice in the reference, so it is not compared
    assert place_counts("a blue ball in the middle at the front and a red cube on the left at the back.", reference) == (1, 1)
    assert place_counts("a blue ball on the right at the front.", reference) == (0, 1)
    assert place_counts("a blue ball.", reference) == (0, 1)  # no place words at all: wrong
    assert place_counts("a green cup on the left at the back.", reference) == (0, 0)  # invented: F1's business
    for i in range(20):  # the scene graph's own caption agrees with itself everywhere it is compared
        s = generate("eval", 3, i)[1]
        agree, compared = place_counts(caption(s), caption(s))
        assert agree == compared
