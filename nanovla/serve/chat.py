"""The OpenAI chat-completions format: a request body -> what the model is asked, and the model's
answer -> a response or stream chunks. No web framework here, so it is tested as plain functions.

What a request may hold (anything else in the body is ignored, as OpenAI's own server does with
fields it does not use):

    {"model": "default_model",                      # must be the served model's id
     "messages": [{"role": "user", "content": [
         {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}},
         {"type": "text", "text": "how many cubes are there?"}]}],   # no text part = describe
     "max_tokens": 64, "temperature": 0, "top_p": 1, "seed": 1, "stream": false}

The model answers one question about one image, so the question is the last user message's text
and the image the last `image_url` in the conversation (a follow-up question may omit the image).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from dataclasses import dataclass

from ..runtime.prompts import DESCRIBE_PROMPT
from ..model.tokenizer import check_question

MAX_TOKENS_LIMIT = 512  # a larger max_tokens is refused (the decoder's context is shorter anyway)
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S)


class ApiError(Exception):
    """A request the server refuses: HTTP status, OpenAI error type and a one-line message."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param)


@dataclass
class ChatRequest:
    image_bytes: bytes  # the encoded image (PNG, JPEG, ...) from the data URL
    question: str  # checked by tokenizer.check_question; DESCRIBE_PROMPT when the message had no text
    sampling: dict  # Runtime.generate keywords
    stream: bool


def parse_data_url(url: object, param: str) -> bytes:
    if not isinstance(url, str) or not url:
        raise bad_request("image_url.url must be a non-empty string", param)
    if re.match(r"^(https?|ftp|file)://", url, re.I):
        raise bad_request("image_url must be a data URL (data:image/...;base64,...); this server fetches nothing, "
                          "so http(s) and file URLs are refused", param)
    match = _DATA_URL.match(url)
    if match is None:
        raise bad_request("image_url is not a base64 data URL (expected data:image/png;base64,...)", param)
    mime = match.group("mime") or ""
    if mime and not mime.startswith("image/"):
        raise bad_request(f"image_url has media type {mime!r}; an image/* data URL is expected", param)
    try:
        data = base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("image_url's base64 payload does not decode", param) from None
    if not data:
        raise bad_request("image_url holds no image data", param)
    return data


def _number(body: dict, name: str, kind: type, low: float, high: float, default):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise bad_request(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}", name)
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}, got {value}", name)
    return kind(value)


def parse_chat_request(body: object, model_id: str, default_max_tokens: int = 64) -> ChatRequest:
    """A decoded JSON body -> ChatRequest; an ApiError (4xx) says what is wrong with it."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_id:
        raise ApiError(404, f"model {model!r} does not exist; this server serves {model_id!r} (GET /v1/models)",
                       "invalid_request_error", "model", "model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    if body.get("n", 1) != 1:
        raise bad_request("only n = 1 is supported", "n")

    image_bytes, question, last_user = None, None, None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            raise bad_request(f"messages[{i}] must be an object with role system, user or assistant", "messages")
        if message["role"] != "user":
            continue  # one-turn model: system prompts and earlier answers do not reach it
        last_user = i
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise bad_request(f"messages[{i}].content must be a string or a list of parts", "messages")
        texts = []
        for j, part in enumerate(parts):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise bad_request(f"{where}.text must be a string", "messages")
                texts.append(part["text"])
            elif kind == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, dict) else image_url
                image_bytes = parse_data_url(url, "messages")
            else:
                raise bad_request(f"{where} must be a text or image_url part", "messages")
        question = " ".join(texts) if texts else None
    if last_user is None:
        raise bad_request("messages hold no user message", "messages")
    if image_bytes is None:
        raise bad_request("no image: a user message needs an image_url part with a data URL", "messages")
    try:
        question = DESCRIBE_PROMPT if question is None else check_question(question)
    except ValueError as e:
        raise bad_request(f"question: {e}", "messages") from None

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    sampling = {
        "max_new_tokens": _number({"max_tokens": max_tokens}, "max_tokens", int, 1, MAX_TOKENS_LIMIT,
                                  default_max_tokens),
        "temperature": _number(body, "temperature", float, 0.0, 2.0, 0.0),
        "top_p": _number(body, "top_p", float, 1e-6, 1.0, 1.0),
        "seed": _number(body, "seed", int, -(2**63), 2**63 - 1, None),
    }
    if sampling["seed"] is not None:
        sampling["seed"] %= 2**63  # torch.Generator takes a non-negative seed
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", "stream")
    return ChatRequest(image_bytes, question, sampling, stream)


# ---------------------------------------------------------------------- responses

def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion(id_: str, model_id: str, result) -> dict:
    """worker.Result -> an OpenAI `chat.completion` object (with nanovla's timings beside it)."""
    return {"id": id_, "object": "chat.completion", "created": int(time.time()), "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "logprobs": None, "finish_reason": result.finish_reason}],
            "nanovla": timings(result)}


def chunk(id_: str, model_id: str, delta: dict, finish_reason: str | None = None, **extra) -> dict:
    """One `chat.completion.chunk` of a stream."""
    return {"id": id_, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_id,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}


def timings(result) -> dict:
    return {"completion_tokens": result.completion_tokens, "latency_ms": round(result.latency_ms, 2),
            "encode_ms": round(result.encode_ms, 2), "queue_ms": round(result.queue_ms, 2),
            "image_cached": result.image_cached}
