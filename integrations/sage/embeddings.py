"""A resilient client of an OpenAI-style embedding API (``POST /v1/embeddings``), over httpx.

:class:`EmbeddingClient` sends ``{"model", "input": [texts], "encoding_format": "float"}`` and
returns the vectors, each HTTP request one attempt through an
:class:`~sage_resilience.adaptive.AdaptivePolicy` (concurrency limit, an AIMD rate limit that
wakes at the first 429, retries within a budget honouring ``Retry-After``, an adaptive breaker
and timeout). It never makes a vector up: the seed's client answered a 429 or a 503 with a random
vector, which went into the memory index as if it were the text's; here every failure is an
exception, and an answer is used only if it is well formed and of the expected length.

**How answers are classified** (the markers of :mod:`sage_resilience.core.errors` decide what
the policy does):

* 429, and 503 or 504 with a ``Retry-After``: :class:`EmbeddingThrottledError`, throttled:
  the adaptive rate limit slows down, and the request is retried after the ``Retry-After``;
* 500, 502, 503, 504 (without a hint), 408, 409, any other 5xx:
  :class:`EmbeddingServiceError`, transient: retried, counted by the breaker;
* no answer (connection refused, reset, closed early): :class:`EmbeddingConnectionError`
  (:class:`EmbeddingTimeoutError` when ``request_timeout`` ran out), transient;
* a 2xx whose body is not a valid answer: :class:`EmbeddingResponseError`, transient;
* vectors of the wrong length: :class:`EmbeddingDimensionError`, permanent;
* 401, 403: :class:`EmbeddingAuthError`; 400, 404, 422, any other 4xx (and a 3xx):
  :class:`EmbeddingRequestError`; permanent: raised at once, not retried, not counted against
  the breaker, the message carrying the provider's.

Why a malformed 200 is transient: a body that does not parse, or lists fewer vectors than
inputs, comes from a proxy or a server that cut its answer short (a truncated transfer, a
gateway's HTML page under a 200); the request was valid and another attempt usually gets a whole
answer, and the breaker should hear of a dependency that answers garbage. Why a wrong length is
permanent: the service answered well-formed vectors of another size, which is a model or
configuration mismatch (another model deployed, the wrong ``dimensions`` expected) that every
attempt repeats; retrying triples the load for the same answer, and the breaker must not open
on a dependency that is up, since failing fast would hide the real error. It is raised at once,
with both lengths, and the vector is never stored, truncated or padded.

Embeddings are a pure function of the text, so every request is idempotent: a timeout after the
request was sent is retried like a refused connection. A ``Retry-After`` longer than the policy
waits for (twice its delay cap: 4 s by default) is not waited out: the throttled error is raised
at once, carrying ``retry_after`` for the caller to decide.

Our own refusals (breaker open, the adaptive rate limit or concurrency limit full) reach the
caller as :class:`~sage_resilience.core.RejectedError`; the service was not called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final

import httpx

from ...adaptive import AdaptiveOptions, AdaptivePolicy, adaptive_policy
from ...core import PermanentError, Registry, ThrottledError, TransientError
from ...core._validate import check_float, check_int

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "EMBEDDINGS_PATH",
    "EMBEDDING_OPTIONS",
    "MAX_BATCH_SIZE",
    "EmbeddingAuthError",
    "EmbeddingClient",
    "EmbeddingConnectionError",
    "EmbeddingDimensionError",
    "EmbeddingError",
    "EmbeddingRequestError",
    "EmbeddingResponseError",
    "EmbeddingServiceError",
    "EmbeddingThrottledError",
    "EmbeddingTimeoutError",
    "classify_response",
    "retry_after_from",
]

DEFAULT_EMBEDDING_MODEL: Final = "text-embedding-3-small"
"""The model asked for when none is given."""

EMBEDDINGS_PATH: Final = "/v1/embeddings"
"""The endpoint, appended to the client's ``base_url``."""

MAX_BATCH_SIZE: Final = 2048
"""The most inputs one request may carry (OpenAI's limit)."""

EMBEDDING_OPTIONS: Final = AdaptiveOptions()
"""The default policy's options: the library's defaults, whose rate limit (AIMD, dormant until
the first 429) is made for an API with a hard requests-per-minute limit (see
:mod:`sage_resilience.adaptive.policy` for each part)."""

_RETRYABLE_4XX: Final = frozenset({408, 409})  # request timeout, conflict: OpenAI's SDK retries
_THROTTLING_5XX: Final = frozenset({503, 504})  # throttling when they carry a Retry-After
_MESSAGE_LIMIT: Final = 300  # characters of a body quoted in an error


# -- errors ------------------------------------------------------------------------------------


class EmbeddingError(Exception):
    """Base class of the errors :class:`EmbeddingClient` raises.

    Attributes:
        status: the HTTP status of the answer, ``None`` when there was none.
        code: the provider's ``error.code`` (``"rate_limit_exceeded"``, ``"invalid_api_key"``),
            when it gave one.
        error_type: the provider's ``error.type`` (``"invalid_request_error"``, ...).
        retry_after: the server's ``Retry-After`` in seconds, when it gave one (the policy's
            retry honours it, see :func:`~sage_resilience.adaptive.delays.hint_from`).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.error_type = error_type
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields: rebuild from the message and the attributes (pickling, copy).
        return (_rebuild, (type(self), self.args), self.__dict__)


def _rebuild(cls: type[EmbeddingError], args: tuple[Any, ...]) -> EmbeddingError:
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class EmbeddingRequestError(EmbeddingError, PermanentError):
    """The service refused the request itself (400, 404, 422, ...): permanent, never retried,
    never counted against the breaker; the message carries the provider's."""


class EmbeddingAuthError(EmbeddingRequestError):
    """The service refused our credentials (401) or our access (403): permanent."""


class EmbeddingDimensionError(EmbeddingError, PermanentError):
    """The service answered vectors of another length than expected: permanent (see the
    module docstring). ``expected`` and ``received`` are the lengths."""

    def __init__(self, message: str, *, expected: int, received: int) -> None:
        super().__init__(message, status=200)
        self.expected = expected
        self.received = received


class EmbeddingThrottledError(EmbeddingError, ThrottledError):
    """The service asked us to slow down (429, or 503/504 with a ``Retry-After``)."""


class EmbeddingServiceError(EmbeddingError, TransientError):
    """The service failed (5xx, 408, 409): transient, retried and counted by the breaker."""


class EmbeddingConnectionError(EmbeddingError, TransientError):
    """No answer: the connection was refused, reset or closed early: transient."""


class EmbeddingTimeoutError(EmbeddingConnectionError, TimeoutError):
    """No answer within ``request_timeout`` (connect, write, read or a pooled connection): a
    ``TimeoutError``, so the concurrency limit counts it as a drop."""


class EmbeddingResponseError(EmbeddingError, TransientError):
    """A 200 whose body is not a valid answer (not JSON, vectors missing or not numbers):
    transient (see the module docstring)."""


# -- reading answers ---------------------------------------------------------------------------


def retry_after_from(headers: httpx.Headers) -> float | None:
    """The server's retry-after in seconds: ``retry-after-ms``, else ``Retry-After`` as seconds
    or as an HTTP date (measured against the answer's own ``Date``, so no local wall clock is
    read); ``None`` when absent or unreadable."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0.0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        date = headers.get("date")
        if date is None:
            return None
        try:
            value = (parsedate_to_datetime(raw) - parsedate_to_datetime(date)).total_seconds()
        except (TypeError, ValueError):
            return None
        return max(0.0, value)
    return value if math.isfinite(value) and value >= 0.0 else None


def _provider_error(response: httpx.Response) -> tuple[str, str | None, str | None]:
    """``(message, code, type)`` from an OpenAI-style error body, or the body's start."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        message = error.get("message")
        code = error.get("code")
        kind = error.get("type")
        return (
            str(message) if message else "(no message)",
            code if isinstance(code, str) else None,
            kind if isinstance(kind, str) else None,
        )
    text = response.text.strip()
    return (text[:_MESSAGE_LIMIT] or "(empty body)", None, None)


def classify_response(response: httpx.Response, *, name: str = "embeddings") -> EmbeddingError:
    """The error an answer that is not a 2xx stands for (see the module docstring's table)."""
    status = response.status_code
    message, code, kind = _provider_error(response)
    hint = retry_after_from(response.headers)
    label = f"{name}: HTTP {status}"
    if code or kind:
        label += f" ({code or kind})"
    text = f"{label}: {message}"
    fields: dict[str, Any] = {
        "status": status,
        "code": code,
        "error_type": kind,
        "retry_after": hint,
    }
    if status == 429 or (status in _THROTTLING_5XX and hint is not None):
        return EmbeddingThrottledError(text, **fields)
    if status >= 500 or status in _RETRYABLE_4XX:
        return EmbeddingServiceError(text, **fields)
    if status in (401, 403):
        return EmbeddingAuthError(text, **fields)
    return EmbeddingRequestError(text, **fields)


def _is_number(value: object) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool)


# -- the client ---------------------------------------------------------------------------------


class EmbeddingClient:
    """Embeddings from an OpenAI-style service, each request an attempt under an adaptive policy.

    ``async with EmbeddingClient(url) as client: vector = await client.embed("text")``.

    Args:
        base_url: the service's base URL (``http://127.0.0.1:8080``); requests go to
            ``base_url + path``.
        model: the model asked for.
        api_key: sent as ``Authorization: Bearer <api_key>`` when given.
        dimensions: the vectors' expected length; an answer of another length raises
            :class:`EmbeddingDimensionError`. ``None``: the length of the first answer is
            adopted (then every answer must match it; read it from :attr:`dimensions`).
        batch_size: the most inputs per request (1 to :data:`MAX_BATCH_SIZE`).
        request_timeout: httpx's timeout per request, seconds (connect, read, write, pool).
        policy: the policy each request goes through; default an
            :class:`~sage_resilience.adaptive.AdaptivePolicy` named ``name`` with
            :data:`EMBEDDING_OPTIONS`.
        name: the dependency's name (the default policy's, and in error messages).
        registry: where to register the policy's parts (``name.breaker``, ``name.limiter``,
            ...). With the default policy, clients of the same ``name`` in one registry share
            one policy (one dependency, one limit), as ``circuit_breaker`` shares by name.
        http_client: an ``httpx.AsyncClient`` to send with (it is not closed by
            :meth:`aclose`); default one of the client's own.
        path: the endpoint's path under ``base_url``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str = DEFAULT_EMBEDDING_MODEL,
        api_key: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 64,
        request_timeout: float = 10.0,
        policy: AdaptivePolicy | None = None,
        name: str = "embeddings",
        registry: Registry | None = None,
        http_client: httpx.AsyncClient | None = None,
        path: str = EMBEDDINGS_PATH,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ValueError(f"api_key must be a non-empty string or None, got {api_key!r}")
        if dimensions is not None:
            check_int("dimensions", dimensions, minimum=1)
        check_int("batch_size", batch_size, minimum=1)
        if batch_size > MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be <= {MAX_BATCH_SIZE}, got {batch_size!r}")
        self.request_timeout = check_float("request_timeout", request_timeout, positive=True)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if policy is not None and not isinstance(policy, AdaptivePolicy):
            raise TypeError(f"policy must be an AdaptivePolicy or None, got {policy!r}")
        if registry is not None and not isinstance(registry, Registry):
            raise TypeError(f"registry must be a Registry or None, got {registry!r}")
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise TypeError(
                f"http_client must be an httpx.AsyncClient or None, got {http_client!r}"
            )
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + path
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self._dimensions = dimensions
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}
        if policy is None:
            if registry is None:
                policy = AdaptivePolicy(name, EMBEDDING_OPTIONS)
            else:
                policy = adaptive_policy(name, registry=registry, **_fields(EMBEDDING_OPTIONS))
        elif registry is not None:
            policy.register(registry)
        self.policy = policy
        self._owns_http = http_client is None
        self._http = (
            httpx.AsyncClient(timeout=self.request_timeout) if http_client is None else http_client
        )

    @property
    def dimensions(self) -> int | None:
        """The vectors' length: the one given, or the first answer's (``None`` before it)."""
        return self._dimensions

    async def embed(self, text: str) -> list[float]:
        """The vector of ``text`` (one request)."""
        _check_text("text", text)
        vectors = await self.policy.acall(self._request, [text])
        return vectors[0]

    async def embed_many(self, texts: Sequence[str]) -> list[list[float]]:
        """The vectors of ``texts``, in order: one request per ``batch_size`` inputs, sent one
        after another (a failed batch raises; the batches before it are not returned)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a sequence of strings, got {texts!r}")
        batch_list = list(texts)
        for index, text in enumerate(batch_list):
            _check_text(f"texts[{index}]", text)
        vectors: list[list[float]] = []
        size = self.batch_size
        for start in range(0, len(batch_list), size):
            vectors.extend(await self.policy.acall(self._request, batch_list[start : start + size]))
        return vectors

    async def _request(self, texts: list[str]) -> list[list[float]]:
        """One attempt: post ``texts``, raise the classified error or return the vectors."""
        payload = {"model": self.model, "input": texts, "encoding_format": "float"}
        try:
            response = await self._http.post(self.url, json=payload, headers=self._headers)
        except httpx.TimeoutException as exc:
            raise EmbeddingTimeoutError(
                f"{self.name}: no answer within {self.request_timeout:g}s "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        except httpx.TransportError as exc:
            raise EmbeddingConnectionError(
                f"{self.name}: no answer from {self.url} ({type(exc).__name__}: {exc})"
            ) from exc
        if not 200 <= response.status_code < 300:
            raise classify_response(response, name=self.name)
        return self._vectors(response, len(texts))

    def _vectors(self, response: httpx.Response, count: int) -> list[list[float]]:
        """The ``count`` vectors of a 2xx answer, ordered by ``index``, checked."""
        try:
            body: Any = response.json()
        except ValueError:
            raise self._malformed(response, "the body is not JSON") from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise self._malformed(response, "no 'data' list")
        if len(data) != count:
            raise self._malformed(response, f"{len(data)} vectors for {count} inputs")
        vectors: list[list[float] | None] = [None] * count
        for item in data:
            index = item.get("index") if isinstance(item, dict) else None
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
                raise self._malformed(response, f"an item without a valid index: {item!r:.80}")
            if vectors[index] is not None:
                raise self._malformed(response, f"index {index} answered twice")
            vector = item.get("embedding")
            if (
                not isinstance(vector, list)
                or not vector
                or not all(_is_number(x) and math.isfinite(x) for x in vector)
            ):
                raise self._malformed(response, f"the embedding at index {index} is not numbers")
            vectors[index] = [float(x) for x in vector]
        result = [v for v in vectors if v is not None]  # every index was seen: all present
        expected = self._dimensions
        for vector in result:
            if expected is None:
                expected = self._dimensions = len(vector)  # the first answer sets the length
            elif len(vector) != expected:
                raise EmbeddingDimensionError(
                    f"{self.name}: the service answered vectors of {len(vector)} dimensions, "
                    f"expected {expected} (model {self.model!r}); no vector is returned",
                    expected=expected,
                    received=len(vector),
                )
        return result

    def _malformed(self, response: httpx.Response, why: str) -> EmbeddingResponseError:
        start = response.text[:_MESSAGE_LIMIT]
        return EmbeddingResponseError(
            f"{self.name}: HTTP {response.status_code} with an invalid answer ({why}): {start!r}",
            status=response.status_code,
        )

    async def aclose(self) -> None:
        """Close the HTTP client if it is the client's own."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> EmbeddingClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"EmbeddingClient({self.url!r}, model={self.model!r}, name={self.name!r})"


def _check_text(name: str, text: object) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {text!r}")
    if not text:
        raise ValueError(f"{name} must not be empty (the API refuses empty inputs)")


def _fields(options: AdaptiveOptions) -> dict[str, Any]:
    """``options`` as the keyword arguments of :func:`adaptive_policy` (not deep-copied)."""
    return {name: getattr(options, name) for name in options.__dataclass_fields__}
