import pytest

from tiny_models import tiny_tokenizer
from nanovla.model.tokenizer import SPECIAL_TOKENS, Tokenizer, check_question


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_round_trip_plain_and_unusual_text(tok):
    for text in ["a red cube on the left at the back.", "how many objects are there?",
                 "Ünïcödé — emoji 🤖 and tabs\tnewlines\n", ""]:
        assert tok.decode(tok.encode(text)) == text


def test_special_tokens_are_single_ids_and_distinct(tok):
    ids = [tok.hf.token_to_id(t) for t in SPECIAL_TOKENS]
    assert None not in ids and len(set(ids)) == len(SPECIAL_TOKENS)
    assert tok.decode([tok.image_id, tok.bos_id]) == ""


def test_render_masks_only_assistant_tokens(tok):
    turns = [{"role": "user", "content": "how many cubes are there?"}, {"role": "assistant", "content": "2"},
             {"role": "user", "content": "is there a red ball?"}, {"role": "assistant", "content": "no"}]
    r = tok.render(turns, image_tokens=5)
    assert len(r.ids) == len(r.mask)
    assert r.ids[:2] == [tok.bos_id, tok.user_start_id]
    assert r.ids[2:7] == [tok.image_id] * 5
    supervised = [i for i, m in zip(r.ids, r.mask) if m]
    assert tok.decode(supervised) == "2no"
    assert supervised.count(tok.assistant_end_id) == 2
    # never on image tokens, user turns or the assistant_start marker
    for i, m in zip(r.ids, r.mask):
        if i in (tok.image_id, tok.user_start_id, tok.user_end_id, tok.assistant_start_id, tok.bos_id):
            assert m == 0
    assert tok.image_prefix(5) + tok.question_suffix("how many cubes are there?") == r.ids[: 7 + len(
        tok.encode("how many cubes are there?")) + 2]


def test_render_rejects_bad_turn_order(tok):
    with pytest.raises(ValueError, match="alternate"):
        tok.render([{"role": "assistant", "content": "hi"}])


def test_save_load_and_bad_file(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    again = Tokenizer.load(str(path))
    assert again.encode("a blue ball") == tok.encode("a blue ball")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable tokenizer"):
        Tokenizer.load(str(bad))


def test_check_question():
    assert check_question("  is there a cube? ") == "is there a cube?"
    with pytest.raises(ValueError, match="empty"):
        check_question("   ")
    with pytest.raises(ValueError, match="at most"):
        check_question("why " * 500)
    # a question must not smuggle in control tokens (an <|image|> would shift the image tokens)
    with pytest.raises(ValueError, match="reserved"):
        check_question("what is <|image|> here?")
