"""OpenAI-shaped answers, as vLLM gives them, that name the version and node that produced them.

The real API node always asks for `logprobs: true` and `top_logprobs >= 5` and, when streaming,
`stream_options.include_usage`; it reads the per-token logprobs to check enforced tokens and the
final usage chunk to bill a stream. So the mock answers those exactly: one logprob entry per
token (with as many alternatives as asked), a usage-only last chunk when asked, `max_tokens`
honoured with `finish_reason: "length"`. Log-probabilities are made up but deterministic
(a function of the token, its position and the seed), so a validator re-running a request on
another node gets the same numbers.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatRequest", "Generation", "chat_completion", "completion_text", "sse_chunks", "tokenize"]

MAX_TOP_LOGPROBS = 20  # vLLM's default max_logprobs


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields the mock reads; the rest of the OpenAI request is accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    messages: list[dict[str, Any]]
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    stream_options: StreamOptions | None = None
    seed: int | None = None


def completion_text(model: str, version: str, node: str, chunks: int) -> str:
    """`chunks` words, so a stream has exactly that many content pieces."""
    words = [f"[{version}]", f"{node}", f"model={model}"]
    words += [f"token{i}" for i in range(max(0, chunks - len(words)))]
    return " ".join(words[: max(chunks, 1)])


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    text = " ".join(str(m.get("content", "")) for m in messages)
    return max(1, len(text.split()))


@dataclass(frozen=True, slots=True)
class Generation:
    """One answer, decided before it is written out: its tokens and what the request asked for."""

    model: str
    version: str
    node: str
    tokens: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    logprobs: bool = False
    top_logprobs: int = 0
    include_usage: bool = False
    seed: int = 0
    id: str = ""
    created: int = 0

    @classmethod
    def plan(cls, request: ChatRequest, model: str, version: str, node: str, chunks: int) -> Generation:
        words = completion_text(model, version, node, chunks).split(" ")
        tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
        limit = min(x for x in (request.max_tokens, request.max_completion_tokens, len(tokens)) if x)
        finish = "length" if limit < len(tokens) else "stop"
        return cls(
            model=model,
            version=version,
            node=node,
            tokens=tuple(tokens[:limit]),
            finish_reason=finish,
            prompt_tokens=_prompt_tokens(request.messages),
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs or 0,
            include_usage=bool(request.stream_options and request.stream_options.include_usage),
            seed=request.seed or 0,
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
        )

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def usage(self) -> dict[str, int]:
        completion = len(self.tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def token_logprob(self, position: int) -> dict[str, Any]:
        token = self.tokens[position]
        entry = _logprob(token, position, self.seed, rank=0)
        alternatives = [entry] + [
            _logprob(f"{token.strip()}~{rank}", position, self.seed, rank)
            for rank in range(1, self.top_logprobs)
        ]
        return {**entry, "top_logprobs": alternatives[: self.top_logprobs]}

    def logprobs_of(self, positions: range) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return {"content": [self.token_logprob(i) for i in positions]}


def _logprob(token: str, position: int, seed: int, rank: int) -> dict[str, Any]:
    """A made-up but stable log-probability: lower for lower-ranked alternatives."""
    jitter = zlib.crc32(f"{seed}:{position}:{token}".encode()) % 1000 / 10_000
    return {"token": token, "logprob": -(rank + jitter), "bytes": list(token.encode())}


def chat_completion(gen: Generation) -> dict[str, Any]:
    return {
        "id": gen.id,
        "object": "chat.completion",
        "created": gen.created,
        "model": gen.model,
        "system_fingerprint": gen.version,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": gen.text},
                "logprobs": gen.logprobs_of(range(len(gen.tokens))),
                "finish_reason": gen.finish_reason,
                "stop_reason": None,
            }
        ],
        "usage": gen.usage(),
    }


def sse_chunks(gen: Generation) -> Iterator[bytes]:
    """Server-sent events as vLLM sends them: role, one token per chunk, the finish, the usage, [DONE]."""

    def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": gen.id,
            "object": "chat.completion.chunk",
            "created": gen.created,
            "model": gen.model,
            "system_fingerprint": gen.version,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n".encode()

    def choice(delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    yield event([choice({"role": "assistant", "content": ""})])
    for i, token in enumerate(gen.tokens):
        yield event([choice({"content": token}, gen.logprobs_of(range(i, i + 1)))])
    yield event([choice({}, None, gen.finish_reason)])
    if gen.include_usage:
        yield event([], gen.usage())
    yield b"data: [DONE]\n\n"


def tokenize(prompt: str, max_model_len: int) -> dict[str, Any]:
    tokens = [zlib.crc32(word.encode()) % 50_000 for word in prompt.split()]
    return {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens}
