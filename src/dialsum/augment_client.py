"""The paid part of `dialsum augment`: an SQLite answer cache (nothing is paid twice), a requests-per-minute limiter,
and one request with retries (exponential backoff with jitter on 429, 5xx, timeouts and unreadable answers,
honouring Retry-After).

The openai client's own retries are off (`max_retries=0`): its loop ignores the limiter and cannot be stopped by
Ctrl-C between attempts, so every attempt goes through `Limiter` and counts. The API key lives only in the client
object; every message that leaves this module passes through `redact`.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dialsum.errors import DialsumError

__all__ = ["Answer", "AnswerCache", "FatalRequestError", "Limiter", "RequestFailed", "cache_key", "request"]


class FatalRequestError(DialsumError):
    """An answer that no retry can fix for any request (bad key, unknown model): the run stops."""


class RequestFailed(Exception):
    """One request failed after every retry (or with an error no retry fixes for it)."""


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int


def cache_key(recipe: str, messages: list[dict], model: str, sampling: dict, source_id: str) -> str:
    """What identifies one paid answer: the recipe, the rendered prompt, the model, the sampling and the source."""
    payload = json.dumps(
        {"recipe": recipe, "messages": messages, "model": model, "sampling": sampling, "source": source_id},
        ensure_ascii=False,
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class AnswerCache:
    """Answers by cache key, committed one by one, so a kill loses at most the requests in flight."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, recipe TEXT, model TEXT, source TEXT, "
            "answer TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)"
        )
        self._db.commit()

    def get(self, key: str) -> Answer | None:
        with self._lock:
            row = self._db.execute(
                "SELECT answer, prompt_tokens, completion_tokens FROM answers WHERE key = ?", (key,)
            ).fetchone()
        return Answer(*row) if row else None

    def put(self, key: str, recipe: str, model: str, source: str, answer: Answer) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, recipe, model, source, answer.text, answer.prompt_tokens, answer.completion_tokens, time.time()),
            )
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Limiter:
    """At most `rpm` request starts per minute, evenly spaced (60/rpm seconds apart); None: no limit."""

    def __init__(self, rpm: float | None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self, stop: threading.Event) -> bool:
        """Block until this request may start; False when the run was stopped meanwhile."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        return not stop.wait(max(0.0, start - time.monotonic())) if start > now else not stop.is_set()


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _retry_after(error) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header of a failed response, if it has one."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def request(client, model: str, messages: list[dict], sampling: dict, settings, limiter: Limiter, stop, secret, log):
    """One chat completion, retried per `settings` (max_retries, backoff_s, backoff_max_s). `log(message)` hears
    of each retry. Returns an Answer; raises RequestFailed (this request) or FatalRequestError (every request)."""
    import openai

    attempt = 0
    while True:
        if not limiter.wait(stop):
            raise RequestFailed("stopped")
        delay = None
        try:
            response = client.chat.completions.create(model=model, messages=messages, **sampling)
            choice = response.choices[0] if response.choices else None
            text = choice.message.content if choice is not None and choice.message is not None else None
            if not isinstance(text, str):
                raise ValueError("the answer has no message content")
            usage = response.usage
            return Answer(text, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)
        except openai.AuthenticationError as error:
            raise FatalRequestError(f"the endpoint refused the API key (HTTP {error.status_code})") from None
        except openai.PermissionDeniedError as error:
            raise FatalRequestError(f"the endpoint denied access (HTTP {error.status_code})") from None
        except openai.NotFoundError as error:
            raise FatalRequestError(
                f"HTTP 404 for model {model!r}: {redact(str(error.message), secret)[:200]}; check --model/--endpoint"
            ) from None
        except openai.APIStatusError as error:
            reason = f"HTTP {error.status_code}"
            if error.status_code != 429 and error.status_code < 500:
                raise RequestFailed(f"{reason}: {redact(str(error.message), secret)[:300]}") from None
            delay = _retry_after(error)
        except openai.APITimeoutError:
            reason = "timeout"
        except openai.APIConnectionError as error:
            reason = f"connection error: {redact(str(error), secret)[:200]}"
        except (ValueError, openai.APIResponseValidationError, AttributeError, IndexError) as error:
            reason = f"unreadable answer: {redact(str(error), secret)[:200]}"
        if attempt >= settings.max_retries:
            raise RequestFailed(f"{reason} after {attempt + 1} attempt(s)")
        backoff = min(settings.backoff_max_s, settings.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
        wait = min(settings.backoff_max_s, delay) if delay is not None else backoff
        log(f"retry {attempt + 1}/{settings.max_retries} in {wait:.1f}s ({reason})")
        attempt += 1
        if stop.wait(wait):
            raise RequestFailed("stopped")
