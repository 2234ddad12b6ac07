"""Any OpenAI-compatible endpoint (vLLM, llama.cpp server, Ollama, a hosted API) as a backend.

A shop with a bigger model behind its own server points shoplm at it. Every failure a
server or network can produce is handled the same way: a refused connection, a timeout, a
5xx/429 status, a body that is not JSON or not the expected shape, or an empty answer is
retried with exponential backoff and full jitter; after ``max_retries`` retries the prompt
is skipped, answered ``None`` and counted by reason in ``stats.failures``. A wrong URL path
or key (HTTP 401/403/404) stops the run at once instead: every later request would fail the
same way. When ``max_consecutive_failures`` prompts in a row have failed, the endpoint is
taken to be down and the remaining prompts are skipped (counted as ``endpoint_down``), so a
dead server costs seconds, not hours of retries.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import httpx

from shoplm.augment import prompts as prompt_text
from shoplm.augment.base import GenerationBackend

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_FATAL_STATUS = frozenset({401, 403, 404})

SYSTEM_PROMPT = (
    "You write data for an online shop's search engine. Answer with the requested text only: "
    "no explanations, no numbering."
)


class BackendConfigError(RuntimeError):
    """The endpoint refuses every request (bad URL, model or key): retrying cannot help."""


class _Skip(Exception):
    """One attempt failed for ``reason``; ``retry`` says whether another may succeed."""

    def __init__(self, reason: str, retry: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class OpenAICompatibleBackend(GenerationBackend):
    """``/v1/chat/completions`` (``mode="chat"``) or ``/v1/completions`` (``"completions"``).

    ``base_url`` is the API root including ``/v1`` (``http://127.0.0.1:8080/v1``). The key
    is read from the environment variable named by ``api_key_env`` (never from config
    files, so it does not end up in an engine manifest); ``None`` sends no key, as local
    servers expect. ``timeout`` bounds each request; ``concurrency`` requests run at once.
    A base model wants ``mode="completions"``: the few-shot prompt is continued as is.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080/v1",
        model_name: str = "default",
        api_key_env: str | None = None,
        mode: Literal["chat", "completions"] = "chat",
        max_tokens: int = 64,
        temperature: float = 0.7,
        seed: int = 0,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        concurrency: int = 4,
        max_consecutive_failures: int | None = 50,
    ) -> None:
        self.base_url = base_url
        self.model_name = model_name
        self.api_key_env = api_key_env
        self.mode = mode
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.concurrency = concurrency
        self.max_consecutive_failures = max_consecutive_failures

    @property
    def model(self) -> str:
        return f"{self.base_url.rstrip('/')}#{self.model_name}"

    def generation_params(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ requests
    def _headers(self) -> dict[str, str]:
        if self.api_key_env is None:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise BackendConfigError(
                f"environment variable {self.api_key_env} (api_key_env) is not set; set it to "
                "the endpoint's API key, or pass api_key_env=None for a server without keys"
            )
        return {"Authorization": f"Bearer {key}"}

    def _body(self, prompt: str) -> tuple[str, dict[str, object]]:
        common = {
            "model": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }
        if self.mode == "chat":
            messages = [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt},
            ]
            return "/chat/completions", {**common, "messages": messages}
        if self.mode == "completions":
            return "/completions", {**common, "prompt": prompt, "stop": prompt_text.STOP}
        raise ValueError(f"mode must be 'chat' or 'completions', got {self.mode!r}")

    def _attempt(self, client: httpx.Client, prompt: str) -> tuple[str, int]:
        """One request: the answer text and its completion tokens, or raise ``_Skip``."""
        path, body = self._body(prompt)
        try:
            response = client.post(self.base_url.rstrip("/") + path, json=body)
        except httpx.TimeoutException as exc:
            raise _Skip("timeout") from exc
        except httpx.TransportError as exc:  # refused, reset, DNS, protocol errors
            raise _Skip("connection") from exc
        if response.status_code in _FATAL_STATUS:
            raise BackendConfigError(
                f"{response.request.url} answered HTTP {response.status_code}: check base_url, "
                f"model_name ({self.model_name!r}) and the key in {self.api_key_env or '(none)'}"
                f"; body: {response.text[:200]!r}"
            )
        if response.status_code >= 400:
            retry = response.status_code in _RETRY_STATUS
            raise _Skip(f"http_{response.status_code}", retry=retry)
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.mode == "chat" else choice["text"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as exc:
            raise _Skip("invalid_json") from exc
        if not isinstance(text, str) or not text.strip():
            raise _Skip("empty")
        usage = data.get("usage") if isinstance(data, dict) else None
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return text.strip(), int(tokens) if isinstance(tokens, int) else len(text.split())

    def _one(self, client: httpx.Client, prompt: str, rng: random.Random) -> str | None:
        """Answer one prompt with retries; ``None`` (and a counted reason) when it gives up."""
        for attempt in range(self.max_retries + 1):
            if self._down.is_set():
                self._count(failure="endpoint_down")
                return None
            try:
                text, tokens = self._attempt(client, prompt)
            except _Skip as skip:
                self._count(requests=1)
                if skip.retry and attempt < self.max_retries:
                    self._count(retries=1)
                    delay = min(self.max_backoff, self.backoff * 2**attempt)
                    time.sleep(delay * rng.random())  # full jitter: spreads retry storms
                    continue
                self._count(failure=skip.reason, failed_prompt=True)
                return None
            self._count(requests=1, tokens=tokens, answered=True)
            return text
        raise AssertionError("unreachable: the loop returns on its last attempt")

    def _count(
        self,
        requests: int = 0,
        retries: int = 0,
        tokens: int = 0,
        failure: str | None = None,
        failed_prompt: bool = False,
        answered: bool = False,
    ) -> None:
        with self._lock:
            stats = self.stats
            stats.requests += requests
            stats.retries += retries
            stats.completion_tokens += tokens
            if failure is not None:
                stats.failures[failure] += 1
            if answered:
                stats.answered += 1
                self._consecutive = 0
            if failed_prompt:
                self._consecutive += 1
                limit = self.max_consecutive_failures
                if limit is not None and self._consecutive >= limit:
                    self._down.set()

    def generate(self, prompts: Sequence[str]) -> list[str | None]:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not hasattr(self, "_lock"):
            self._lock = threading.Lock()
            self._down = threading.Event()
            self._consecutive = 0
        headers = self._headers()
        started = time.perf_counter()
        timeout = httpx.Timeout(self.timeout, connect=self.connect_timeout)
        limits = httpx.Limits(max_connections=self.concurrency)
        seeds = random.Random(self.seed + self.stats.prompts)
        with (
            httpx.Client(timeout=timeout, headers=headers, limits=limits) as client,
            ThreadPoolExecutor(max_workers=self.concurrency) as pool,
        ):
            rngs = [random.Random(seeds.random()) for _ in prompts]
            answers = list(pool.map(lambda p, r: self._one(client, p, r), prompts, rngs))
        self.stats.prompts += len(prompts)
        self.stats.seconds += time.perf_counter() - started
        return answers
