"""Byte-level BPE tokenizer with nanovla's special tokens, and conversation rendering.

Built on Hugging Face `tokenizers` (no torch), so the same tokenizer.json serves training, the
checkpoint and the exported bundle on the robot.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

BOS = "<|bos|>"
USER_START = "<|user_start|>"
USER_END = "<|user_end|>"
ASSISTANT_START = "<|assistant_start|>"
ASSISTANT_END = "<|assistant_end|>"
IMAGE = "<|image|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (BOS, USER_START, USER_END, ASSISTANT_START, ASSISTANT_END, IMAGE, PAD)

MAX_QUESTION_CHARS = 500  # longer questions are refused (they would not fit the context anyway)


@dataclass
class Rendered:
    ids: list[int]
    mask: list[int]  # 1 where the token is a supervised assistant token


class Tokenizer:
    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens: {', '.join(missing)}")
        self.bos_id = hf.token_to_id(BOS)
        self.user_start_id = hf.token_to_id(USER_START)
        self.user_end_id = hf.token_to_id(USER_END)
        self.assistant_start_id = hf.token_to_id(ASSISTANT_START)
        self.assistant_end_id = hf.token_to_id(ASSISTANT_END)
        self.image_id = hf.token_to_id(IMAGE)
        self.pad_id = hf.token_to_id(PAD)

    # ---------------------------------------------------------------- construction / io
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024) -> "Tokenizer":
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        try:
            hf = HFTokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception on bad json
            raise ValueError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0]})") from None
        return cls(hf)

    def save(self, path: str) -> None:
        self.hf.save(path)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def special_ids(self) -> dict[str, int]:
        return {t: self.hf.token_to_id(t) for t in SPECIAL_TOKENS}

    # ---------------------------------------------------------------- text
    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    # ---------------------------------------------------------------- conversations
    def render(self, turns: list[dict], image_tokens: int = 0) -> Rendered:
        """Render [{'role': 'user'|'assistant', 'content': str}, ...] to ids and a loss mask.

        <|bos|> <|user_start|> <|image|>*N question <|user_end|> <|assistant_start|> answer
        <|assistant_end|> ... ; the image placeholders open the first user turn. Only assistant
        tokens (and their <|assistant_end|>) are supervised."""
        ids, mask = [self.bos_id], [0]
        for i, turn in enumerate(turns):
            role = turn["role"]
            expected = "user" if i % 2 == 0 else "assistant"
            if role != expected:
                raise ValueError(f"turn {i} is {role!r}; conversations alternate user/assistant from user")
            if role == "user":
                body = [self.user_start_id] + ([self.image_id] * image_tokens if i == 0 else [])
                body += self.encode(turn["content"]) + [self.user_end_id]
                ids += body
                mask += [0] * len(body)
            else:
                ids.append(self.assistant_start_id)
                mask.append(0)
                answer = self.encode(turn["content"]) + [self.assistant_end_id]
                ids += answer
                mask += [1] * len(answer)
        return Rendered(ids, mask)

    def image_prefix(self, image_tokens: int) -> list[int]:
        """The ids shared by every question about one image: its KV cache is the image context."""
        return [self.bos_id, self.user_start_id] + [self.image_id] * image_tokens

    def question_suffix(self, question: str) -> list[int]:
        """The ids after the image prefix for one question, up to <|assistant_start|>."""
        return self.encode(question) + [self.user_end_id, self.assistant_start_id]


def check_question(question: str) -> str:
    question = question.strip()
    if not question:
        raise ValueError("empty question")
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(f"question is {len(question)} characters; at most {MAX_QUESTION_CHARS} are accepted")
    for token in SPECIAL_TOKENS:
        if token in question:
            raise ValueError(f"question contains the reserved token {token}")
    return question


def tokenizer_fingerprint(path: str) -> str:
    """A stable digest of tokenizer.json's vocabulary, to match a bundle with its checkpoint."""
    import hashlib

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    vocab = json.dumps(data.get("model", {}).get("vocab", {}), sort_keys=True)
    return hashlib.sha256(vocab.encode()).hexdigest()[:16]
