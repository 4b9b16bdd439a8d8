"""Async OpenAI-compatible chat client: cache, global limiter, retries, accounting.

Why not ``ray.data.llm``'s HTTP processor: it awaits one request at a time within a batch and
has no Retry-After, cache or token accounting. Why aiohttp by default: the openai SDK costs
~5 CPU-ms per request on this kind of machine, aiohttp ~0.5 (CPU, not the network, is the
ceiling of a client on a small node); ``client: openai`` keeps the SDK path for providers
that need it.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from ..redact import redact, register
from .cache import ResponseCache, cache_key
from .config import LLMSettings


class Limiter(Protocol):
    async def acquire(self, est_tokens: int = 0) -> None: ...
    async def release(self, est_tokens: int = 0, used_tokens: int | None = None) -> None: ...
    async def pause(self, seconds: float) -> None: ...


class LLMError(RuntimeError):
    """A request that finally failed; ``reason`` is a short stable code for the error report."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _Retryable(Exception):
    def __init__(self, kind: str, message: str = "", retry_after: float | None = None):
        super().__init__(message or kind)
        self.kind = kind
        self.retry_after = retry_after


@dataclass
class Completion:
    content: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    attempts: int
    key: str


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds or an HTTP date; None when absent or unparsable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def response_format(mode: str, schema: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    if mode == "off" or schema is None:
        return None
    if mode == "object":
        return {"type": "json_object"}
    if mode == "object_schema":  # llama-cpp-python's grammar-constrained form
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    """Rough prompt size (chars/3, generous for CJK) + the completion ceiling, for TPM budgets."""
    return sum(len(m.get("content", "")) for m in messages) // 3 + max_tokens


class Gateway:
    """One per actor (one aiohttp session, one event loop); limits are global via ``limiter``."""

    def __init__(self, settings: LLMSettings, limiter: Limiter, cache: ResponseCache,
                 base_url: str | None = None, api_key: str | None = None):
        self.s = settings
        self.base_url = (base_url or settings.base_url or "").rstrip("/")
        if not self.base_url:
            raise ValueError("Gateway needs a base_url (the job starts the embedded LLM otherwise)")
        self.limiter = limiter
        self.cache = cache
        self.stats: Counter[str] = Counter()
        self._api_key = api_key or os.environ.get(settings.api_key_env, "") or "EMPTY"
        register(self._api_key)  # whatever echoes it back is redacted (embedforge.redact)
        self._session: Any = None
        self._oa: Any = None
        self._jitter = wait_random_exponential(multiplier=settings.backoff_base_s,
                                               max=settings.backoff_max_s)

    def params(self) -> dict[str, Any]:
        """Sampling params: part of the cache key (the API key never is)."""
        return {"temperature": self.s.temperature, "top_p": self.s.top_p,
                "max_tokens": self.s.max_tokens, **self.s.extra_body}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._oa is not None:
            await self._oa.close()
            self._oa = None

    async def complete(self, messages: list[dict[str, str]], *, template_version: str,
                       sample_index: str | int, schema: dict[str, Any] | None = None,
                       schema_name: str = "output") -> Completion:
        params = self.params()
        key = cache_key(self.s.model, template_version, messages, params, sample_index)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats["cache_hits"] += 1
            return Completion(hit["content"], hit.get("prompt_tokens", 0),
                              hit.get("completion_tokens", 0), True, 0, key)
        payload: dict[str, Any] = {"model": self.s.model, "messages": messages, **params}
        fmt = response_format(self.s.json_mode, schema, schema_name)
        if fmt is not None:
            payload["response_format"] = fmt
        est = estimate_tokens(messages, self.s.max_tokens)
        attempts = 0

        def wait(state: Any) -> float:
            exc = state.outcome.exception()
            if isinstance(exc, _Retryable) and exc.retry_after is not None:
                return 0.0  # the global pause (limiter) already holds every sender back
            return self._jitter(state)

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.s.max_retries + 1), wait=wait,
                retry=retry_if_exception_type(_Retryable), reraise=False,
            ):
                with attempt:
                    attempts += 1
                    if attempts > 1:
                        self.stats["retries"] += 1
                    content, p_tok, c_tok = await self._send(payload, est)
        except LLMError:
            self.stats["failed"] += 1
            raise
        except RetryError as exc:
            last = exc.last_attempt.exception()
            kind = getattr(last, "kind", "error")
            self.stats["failed"] += 1
            raise LLMError(f"exhausted_{kind}",
                           f"gave up after {attempts} attempts: {last}") from None
        self.stats["ok"] += 1
        self.stats["prompt_tokens"] += p_tok
        self.stats["completion_tokens"] += c_tok
        self.cache.put(key, {"content": content, "prompt_tokens": p_tok,
                             "completion_tokens": c_tok, "model": self.s.model,
                             "template": template_version})
        return Completion(content, p_tok, c_tok, False, attempts, key)

    async def _send(self, payload: dict[str, Any], est: int) -> tuple[str, int, int]:
        await self.limiter.acquire(est)
        used: int | None = None
        self.stats["calls"] += 1
        try:
            if self.s.client == "openai":
                content, p_tok, c_tok = await self._send_openai(payload)
            else:
                content, p_tok, c_tok = await self._send_aiohttp(payload)
            used = p_tok + c_tok
            return content, p_tok, c_tok
        except _Retryable as exc:
            self.stats[f"error_{exc.kind}"] += 1
            if exc.retry_after is not None:
                await self.limiter.pause(exc.retry_after)
            raise
        finally:
            await self.limiter.release(est, used)

    def _status_error(self, status: int, retry_after: str | None, text: str) -> Exception:
        if status in (429, 503) or (status == 529):
            return _Retryable(f"http_{status}", f"HTTP {status}",
                              parse_retry_after(retry_after) if retry_after else None)
        text = redact(text)  # a provider may echo the request's Authorization header
        if status >= 500 or status in (408, 409):
            return _Retryable(f"http_{status}", f"HTTP {status}: {text[:200]}")
        if status in (401, 403):
            return LLMError("auth", f"HTTP {status}: the API refused the key in "
                                    f"${self.s.api_key_env} ({text[:200]})")
        return LLMError(f"http_{status}", f"HTTP {status}: {text[:300]}")

    async def _send_aiohttp(self, payload: dict[str, Any]) -> tuple[str, int, int]:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                headers={"Authorization": f"Bearer {self._api_key}",
                         "Content-Type": "application/json"},
            )
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        try:
            async with self._session.post(
                f"{self.base_url}/chat/completions", data=body,
                timeout=aiohttp.ClientTimeout(total=self.s.timeout_s),
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise self._status_error(resp.status, resp.headers.get("Retry-After"),
                                             raw.decode("utf-8", "replace"))
        except asyncio.TimeoutError:
            raise _Retryable("timeout", f"no answer within {self.s.timeout_s}s") from None
        except aiohttp.ClientError as exc:
            raise _Retryable("connection", f"{type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable("malformed", f"response is not a chat completion: {exc}") from None
        if not isinstance(content, str):
            raise _Retryable("malformed", "message content is not text")
        return content, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)

    async def _send_openai(self, payload: dict[str, Any]) -> tuple[str, int, int]:
        import openai

        if self._oa is None:
            self._oa = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key,
                                          max_retries=0, timeout=self.s.timeout_s)
        extra = {k: payload[k] for k in self.s.extra_body}  # the SDK's way for non-standard fields
        standard = {k: v for k, v in payload.items() if k not in extra}
        try:
            resp = await self._oa.chat.completions.create(**standard, extra_body=extra or None)
        except openai.APIStatusError as exc:
            raise self._status_error(exc.status_code, exc.response.headers.get("retry-after"),
                                     str(exc)) from None
        except openai.APITimeoutError:
            raise _Retryable("timeout", f"no answer within {self.s.timeout_s}s") from None
        except openai.APIConnectionError as exc:
            raise _Retryable("connection", str(exc)) from None
        except (openai.APIError, ValueError) as exc:
            raise _Retryable("malformed", str(exc)) from None
        try:
            content = resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError) as exc:
            raise _Retryable("malformed", f"response is not a chat completion: {exc}") from None
        if not isinstance(content, str):
            raise _Retryable("malformed", "message content is not text")
        usage = resp.usage
        return (content, int(getattr(usage, "prompt_tokens", 0) or 0),
                int(getattr(usage, "completion_tokens", 0) or 0))


def estimate_cost(prices: dict[str, list[float]], model: str, prompt_tokens: int,
                  completion_tokens: int) -> float | None:
    """USD for the tokens at the configured per-million prices; None for unpriced models."""
    price = prices.get(model)
    if not price:
        return None
    return round(prompt_tokens / 1e6 * price[0] + completion_tokens / 1e6 * price[1], 6)
