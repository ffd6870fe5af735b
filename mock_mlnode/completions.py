"""OpenAI-shaped answers that name the version and node that produced them."""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["ChatRequest", "chat_completion", "completion_text", "sse_chunks", "tokenize"]


class ChatRequest(BaseModel):
    """The fields the mock reads; the rest of the OpenAI request is accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    messages: list[dict[str, Any]]
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None


def completion_text(model: str, version: str, node: str, chunks: int) -> str:
    """`chunks` words, so a stream has exactly that many content pieces."""
    words = [f"[{version}]", f"{node}", f"model={model}"]
    words += [f"token{i}" for i in range(max(0, chunks - len(words)))]
    return " ".join(words[: max(chunks, 1)])


def chat_completion(model: str, version: str, node: str, chunks: int) -> dict[str, Any]:
    text = completion_text(model, version, node, chunks)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": version,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 8,
            "completion_tokens": len(text.split()),
            "total_tokens": 8 + len(text.split()),
        },
    }


def sse_chunks(model: str, version: str, node: str, chunks: int) -> Iterator[bytes]:
    """Server-sent events as vLLM sends them: role, one piece per word, a stop, then [DONE]."""
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": version,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        return f"data: {json.dumps(body)}\n\n".encode()

    yield event({"role": "assistant", "content": ""})
    words = completion_text(model, version, node, chunks).split(" ")
    for i, word in enumerate(words):
        yield event({"content": word if i == 0 else " " + word})
    yield event({}, "stop")
    yield b"data: [DONE]\n\n"


def tokenize(prompt: str, max_model_len: int) -> dict[str, Any]:
    tokens = [zlib.crc32(word.encode()) % 50_000 for word in prompt.split()]
    return {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens}
