"""A small client for any OpenAI-compatible chat endpoint (`POST {endpoint}/chat/completions`), with a
disk cache, bounded retries and token/cost counts.

- The endpoint is a base URL such as `http://localhost:8000/v1` (or the full `.../chat/completions`).
- The key is read from an environment variable (default `OPENAI_API_KEY`) and sent as a Bearer token;
  without it no Authorization header is sent (local servers need none). The key is never written to the
  cache or printed.
- Every request has a connect and a read timeout. Connection errors, timeouts, 429 and 5xx are retried
  at most `retries` times with exponential backoff (a server's Retry-After is honoured, capped); other
  errors stop at once. When the retries are spent the error is one line naming the endpoint and the fix.
- Answers are cached on disk under a key of the request body (model, messages, sampling options) —
  not of the URL, so the same model behind another address reuses them — and a rerun of the same
  requests makes no call at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError
from saekit.io import atomic_write_json

MAX_RETRY_AFTER_S = 60.0


@dataclass
class Usage:
    """What the requests cost: calls made, answers read from the cache, tokens (as the server counts
    them; cached answers count in `cached_*`, not in the spent tokens)."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def cost(self, price_in: float, price_out: float) -> float:
        """Dollars spent, at prices per million prompt / completion tokens."""
        return (self.prompt_tokens * price_in + self.completion_tokens * price_out) / 1e6

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lock"}


@dataclass
class ChatReply:
    content: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: Any = None  # the choice's `logprobs` object when requested
    cached: bool = False


def _reason(error: BaseException) -> str:
    """A few words for a connection failure (requests' own message is a long nested repr)."""
    text = str(error)
    for needle, words in (("refused", "connection refused"), ("Name or service not known", "unknown host"),
                          ("nodename nor servname", "unknown host"), ("getaddrinfo", "unknown host"),
                          ("timed out", "connect timed out"), ("unreachable", "network unreachable")):
        if needle in text:
            return words
    return type(error).__name__


def _request_key(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ChatClient:
    """`complete(messages, ...)` -> ChatReply; thread-safe (one HTTP session per thread)."""

    def __init__(self, endpoint: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 cache_dir: str | Path | None = None, timeout: float = 60.0, connect_timeout: float = 10.0,
                 retries: int = 3, backoff: float = 1.0) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise SaekitError(f"--endpoint must be an http(s) URL such as http://localhost:8000/v1, got "
                              f"{endpoint!r}")
        if not model:
            raise SaekitError("no chat model named: pass --model (the model name the endpoint serves)")
        if retries < 0 or timeout <= 0 or connect_timeout <= 0:
            raise SaekitError("retries must be >= 0 and timeouts positive")
        endpoint = endpoint.rstrip("/")
        self.url = endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.api_key = os.environ.get(api_key_env) or None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.timeout = (connect_timeout, timeout)
        self.retries, self.backoff = retries, backoff
        self.usage = Usage()
        self._local = threading.local()

    # ------------------------------------------------------------------ cache
    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _cached(self, key: str) -> ChatReply | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text())["reply"]
            return ChatReply(str(stored["content"]), int(stored["prompt_tokens"]),
                             int(stored["completion_tokens"]), stored.get("logprobs"), cached=True)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged entry is asked again and rewritten

    def _store(self, key: str, body: dict[str, Any], reply: ChatReply) -> None:
        path = self._cache_path(key)
        if path is not None:
            atomic_write_json(path, {"request": body, "reply": {
                "content": reply.content, "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens, "logprobs": reply.logprobs}})

    # ------------------------------------------------------------------ HTTP
    def _session(self) -> Any:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import requests

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                with self.usage.lock:
                    self.usage.retries += 1
            wait = self.backoff * 2 ** attempt
            try:
                response = self._session().post(self.url, json=body, headers=headers, timeout=self.timeout)
            except requests.exceptions.Timeout:
                problem = f"no answer within {self.timeout[1]:g}s (raise --timeout, or check the server)"
            except requests.exceptions.ConnectionError as error:
                problem = f"cannot connect ({_reason(error)}); is the server running at that address?"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise SaekitError(f"chat endpoint {self.url} answered 200 with a body that is not "
                                          "JSON: it does not follow the OpenAI chat protocol") from None
                detail = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
                if response.status_code in (401, 403):
                    raise SaekitError(f"chat endpoint {self.url} refused the request ({response.status_code}"
                                      f" {detail}): set ${self.api_key_env} to a valid key")
                if response.status_code != 429 and response.status_code < 500:
                    raise SaekitError(f"chat endpoint {self.url} rejected the request "
                                      f"({response.status_code} {detail}); check --model {self.model!r}")
                problem = f"HTTP {response.status_code} {detail}".strip()
                retry_after = response.headers.get("Retry-After")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(float(retry_after), MAX_RETRY_AFTER_S)
            if attempt < self.retries:
                time.sleep(wait)
        raise SaekitError(f"chat endpoint {self.url}: {problem} (gave up after {self.retries + 1} attempts)")

    # ------------------------------------------------------------------ API
    def check_reachable(self) -> None:
        """Open (and close) a TCP connection to the endpoint's host: a dead address fails here in one
        line, before any expensive work, without sending a request."""
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname or "", port), timeout=self.timeout[0]).close()
        except OSError as error:
            raise SaekitError(f"chat endpoint {self.url}: cannot connect ({_reason(error)}); is the server "
                              "running at that address?") from None

    def complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float | None = None,
                 logprobs: bool = False, top_logprobs: int = 5) -> ChatReply:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "n": 1}
        if temperature is not None:
            body["temperature"] = temperature
        if logprobs:
            body["logprobs"], body["top_logprobs"] = True, top_logprobs
        key = _request_key(body)
        cached = self._cached(key)
        if cached is not None:
            with self.usage.lock:
                self.usage.cache_hits += 1
                self.usage.cached_prompt_tokens += cached.prompt_tokens
                self.usage.cached_completion_tokens += cached.completion_tokens
            return cached
        data = self._post(body)
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise SaekitError(f"chat endpoint {self.url} answered without choices[0].message.content: it "
                              "does not follow the OpenAI chat protocol") from None
        usage = data.get("usage") or {}
        reply = ChatReply(str(content), int(usage.get("prompt_tokens") or 0),
                          int(usage.get("completion_tokens") or 0), choice.get("logprobs"))
        with self.usage.lock:
            self.usage.requests += 1
            self.usage.prompt_tokens += reply.prompt_tokens
            self.usage.completion_tokens += reply.completion_tokens
        self._store(key, body, reply)
        return reply
