"""A real HTTP embedding service on 127.0.0.1: OpenAI's ``/v1/embeddings``, limits and faults.

:class:`EmbeddingStub` is what the embedding client is tested against and what ``sage-resilience
demo`` runs: a stdlib :class:`~http.server.ThreadingHTTPServer` in a daemon thread, answering
``POST /v1/embeddings`` with the schema Sage's provider speaks::

    {"model": "text-embedding-3-small", "input": "text" | ["text", ...], "encoding_format": "float"}
    -> {"object": "list", "model": ...,
        "data": [{"object": "embedding", "index": 0, "embedding": [0.12, ...]}, ...],
        "usage": {"prompt_tokens": n, "total_tokens": n}}

**Deterministic vectors.** The vector of a text is drawn from ``random.Random(seed)`` with the
seed taken from the SHA-256 of the text (``dimensions`` Gaussian draws, normalised to unit
length), so the same text always gets the same vector, in any process, and a test can check an
answer with :meth:`EmbeddingStub.vector_for`.

**A requests-per-minute limit.** With ``rpm`` set, requests are admitted by a token bucket
refilled at ``rpm / window`` requests per second and holding at most ``burst`` of them (default
one second's worth: OpenAI enforces a per-minute limit as its per-second share, so 3000 RPM
allows bursts of 50, not of 3000; ``window`` 60 s makes ``rpm`` per minute, tests use 1 s). A
request finding the bucket empty gets a 429 with OpenAI's ``rate_limit_exceeded`` body,
``Retry-After`` (seconds until the next slot frees, fractional), ``retry-after-ms``, and the
``x-ratelimit-*-requests`` headers (``reset``: until the bucket is full again). Refused
requests take no slot. Over any span ``t`` the stub serves at most ``burst + t * rpm / window``
requests.

**Faults on a schedule.** :meth:`EmbeddingStub.inject` queues a fault for the next ``times``
requests, or for every request during ``seconds``, or until :meth:`~EmbeddingStub.clear`; the
queued faults are served in order. Kinds (:data:`FAULT_KINDS`): the provider's error answers
(400, 401, 403, 404, 429, 500, 502, 503, 504, with their OpenAI-style bodies and, for 429 and
optionally 503/504, a ``Retry-After``), ``"slow"`` (the right answer after ``delay`` seconds),
``"wrong_dimensions"`` (vectors one element short; two long when ``dimensions`` is 1),
``"malformed"`` (a 200 whose body is not JSON), ``"shuffled"`` (the right vectors listed in
reverse order, each with its ``index``, which clients must sort by) and ``"disconnect"`` (the
connection is closed without an answer). An error fault answers before the limit is consulted
and takes no slot; the answering faults (slow, wrong dimensions, malformed, shuffled) go through
the limit like any request.

A request is handled in this order: counted; refused with 401 without the right
``Authorization: Bearer`` key (when ``api_key`` is set); refused with 400 when its body is not a
valid request; given the next scheduled fault; refused with 429 over the limit; answered.

**Counts.** Every request received is counted, thread-safely: in total, by status code, by
fault served, by batch size (inputs per embedded request) and the inputs embedded;
:meth:`~EmbeddingStub.stats` returns a frozen :class:`StubStats` snapshot,
:meth:`~EmbeddingStub.reset_counts` zeroes them.

The server runs in real time (it is a real server: time is the monotonic clock, a ``"slow"``
answer really waits). :meth:`~EmbeddingStub.stop` closes the open connections, ends a slow
answer early, and joins the server's threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, get_args

from ....core._validate import check_float, check_int, check_optional_float, check_optional_int

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDINGS_PATH",
    "FAULT_KINDS",
    "MAX_INPUTS",
    "EmbeddingStub",
    "FaultKind",
    "ScheduledFault",
    "StubStats",
]

EMBEDDINGS_PATH: Final = "/v1/embeddings"
"""The one endpoint the stub serves."""

DEFAULT_MODEL: Final = "text-embedding-3-small"
"""The model named in answers when the request names none it knows (any name is accepted)."""

MAX_INPUTS: Final = 2048
"""The most inputs one request may carry (OpenAI's limit); more is a 400."""

FaultKind = Literal[
    "400",
    "401",
    "403",
    "404",
    "429",
    "500",
    "502",
    "503",
    "504",
    "slow",
    "wrong_dimensions",
    "malformed",
    "shuffled",
    "disconnect",
]
"""A fault :meth:`EmbeddingStub.inject` can schedule (a status code may also be given as an
int: ``inject(503)`` is ``inject("503")``)."""

FAULT_KINDS: Final[tuple[str, ...]] = get_args(FaultKind)
"""Every :data:`FaultKind`, in order."""

_ANSWERING_FAULTS: Final = frozenset({"slow", "wrong_dimensions", "malformed", "shuffled"})

# The provider's error bodies (type, code, message) per status, after OpenAI's API reference.
_ERRORS: Final[Mapping[int, tuple[str, str | None, str]]] = MappingProxyType(
    {
        400: (
            "invalid_request_error",
            None,
            "'$.input' is invalid. Please check the API reference: "
            "https://platform.openai.com/docs/api-reference.",
        ),
        401: (
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
        ),
        403: (
            "request_forbidden",
            "unsupported_country_region_territory",
            "Country, region, or territory not supported",
        ),
        404: (
            "invalid_request_error",
            "model_not_found",
            "The model does not exist or you do not have access to it.",
        ),
        429: (
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached for requests. Please try again later.",
        ),
        500: (
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        ),
        502: ("server_error", None, "Bad gateway."),
        503: (
            "server_error",
            "engine_overloaded",
            "The engine is currently overloaded, please try again later.",
        ),
        504: ("server_error", None, "Gateway timeout: the request took too long."),
    }
)

_REASONS: Final[Mapping[int, str]] = MappingProxyType(
    {
        200: "OK",
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        429: "Too Many Requests",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }
)

DEFAULT_RETRY_AFTER: Final = 1.0
"""The ``Retry-After`` of an injected 429 when :meth:`EmbeddingStub.inject` is given none."""


def _fault_kind(kind: object) -> str:
    if isinstance(kind, int) and not isinstance(kind, bool):
        kind = str(kind)
    if not isinstance(kind, str) or kind not in FAULT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    return kind


@dataclass(slots=True, eq=False)
class ScheduledFault:
    """One fault queued by :meth:`EmbeddingStub.inject` (read its counts; do not change it).

    Attributes:
        kind: the :data:`FaultKind`.
        remaining: requests it will still be served to (``None``: no count limit).
        until: the monotonic time it expires at (``None``: no time limit).
        retry_after: the ``Retry-After`` it sends (429, 503, 504), in seconds.
        delay: how long a ``"slow"`` answer waits, in seconds.
        served: requests it has been served to so far.
    """

    kind: str
    remaining: int | None
    until: float | None
    retry_after: float | None
    delay: float
    served: int = 0

    def live(self, now: float) -> bool:
        """Whether it still applies at ``now`` (count left and time not past)."""
        return (self.remaining is None or self.remaining > 0) and (
            self.until is None or now < self.until
        )


@dataclass(frozen=True, slots=True)
class StubStats:
    """What the stub has received since it started or its counts were reset.

    Attributes:
        requests: every request received (answered, refused, faulted or disconnected).
        by_status: answers by HTTP status code (a disconnect has none and is not in it).
        by_fault: injected faults served, by kind.
        by_batch_size: embedded answers (status 200) by the number of inputs in the request.
        inputs: inputs embedded (summed over the 200 answers).
        rate_limited: requests refused by the ``rpm`` limit (429s not injected).
        disconnected: connections closed without an answer by the ``"disconnect"`` fault.
    """

    requests: int
    by_status: Mapping[int, int] = field(default_factory=dict)
    by_fault: Mapping[str, int] = field(default_factory=dict)
    by_batch_size: Mapping[int, int] = field(default_factory=dict)
    inputs: int = 0
    rate_limited: int = 0
    disconnected: int = 0

    def status(self, code: int) -> int:
        """Answers with status ``code`` (0 when none)."""
        return self.by_status.get(code, 0)

    @property
    def ok(self) -> int:
        """Embedded answers (status 200)."""
        return self.status(200)


class _Counts:
    """The mutable counts behind :class:`StubStats` (the stub's lock held by the caller)."""

    __slots__ = (
        "by_batch_size",
        "by_fault",
        "by_status",
        "disconnected",
        "inputs",
        "rate_limited",
        "requests",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.by_status: Counter[int] = Counter()
        self.by_fault: Counter[str] = Counter()
        self.by_batch_size: Counter[int] = Counter()
        self.inputs = 0
        self.rate_limited = 0
        self.disconnected = 0

    def snapshot(self) -> StubStats:
        return StubStats(
            requests=self.requests,
            by_status=MappingProxyType(dict(self.by_status)),
            by_fault=MappingProxyType(dict(self.by_fault)),
            by_batch_size=MappingProxyType(dict(self.by_batch_size)),
            inputs=self.inputs,
            rate_limited=self.rate_limited,
            disconnected=self.disconnected,
        )


class _Answer:
    """What the handler sends back for one request."""

    __slots__ = ("body", "close", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = {} if headers is None else headers
        self.close = close


def _seconds(value: float) -> str:
    """A header value in seconds, fractional (``"0.25"``), never negative."""
    return f"{max(0.0, value):.3f}".rstrip("0").rstrip(".") or "0"


def _error_body(status: int, message: str | None = None, *, param: str | None = None) -> bytes:
    kind, code, default = _ERRORS[status]
    error = {
        "message": default if message is None else message,
        "type": kind,
        "param": param,
        "code": code,
    }
    return json.dumps({"error": error}).encode()


def _tokens(text: str) -> int:
    """An approximation of the tokens in ``text`` for ``usage`` (words, at least one)."""
    return max(1, len(text.split()))


class EmbeddingStub:
    """A real OpenAI-style embedding server on 127.0.0.1 (see the module docstring).

    ``with EmbeddingStub(rpm=50, window=1.0) as stub:`` starts it and stops it after;
    :attr:`url` is its base URL (``http://127.0.0.1:PORT``), the endpoint
    ``url + "/v1/embeddings"``.

    Args:
        dimensions: the length of the vectors it answers (>= 1).
        rpm: requests served per ``window`` seconds, or ``None`` for no limit.
        window: the limit's window in seconds (60: ``rpm`` is per minute).
        burst: the most requests served at once after a quiet spell (default
            ``ceil(rpm / window)``, one second's worth, at least 1).
        api_key: when set, requests must carry ``Authorization: Bearer <api_key>`` (else 401).
        latency: seconds every answer waits before it is sent (0: at once).
        host: the address to listen on (the loopback interface by default).
        port: the port (0: an ephemeral one, read it from :attr:`port` once started).
    """

    def __init__(
        self,
        *,
        dimensions: int = 16,
        rpm: int | None = None,
        window: float = 60.0,
        burst: int | None = None,
        api_key: str | None = None,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.dimensions = check_int("dimensions", dimensions, minimum=1)
        self.rpm = check_optional_int("rpm", rpm, minimum=1)
        self.window = check_float("window", window, positive=True)
        self.burst = check_optional_int("burst", burst, minimum=1)
        if self.burst is not None and self.rpm is None:
            raise ValueError("burst needs rpm (a limit to burst over)")
        if self.rpm is not None and self.burst is None:
            self.burst = max(1, math.ceil(self.rpm / self.window))
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ValueError(f"api_key must be a non-empty string or None, got {api_key!r}")
        self.api_key = api_key
        self.latency = check_float("latency", latency, minimum=0.0)
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        self.host = host
        self._port = check_int("port", port, minimum=0)
        if self._port > 65535:
            raise ValueError(f"port must be <= 65535, got {port!r}")
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._faults: deque[ScheduledFault] = deque()
        self._tokens = float(self.burst or 0)  # the limit's bucket, full at start
        self._refilled_at = time.monotonic()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: dict[threading.Thread, socket.socket] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server is accepting requests."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The port it listens on (the ephemeral one chosen once started)."""
        return self._port

    @property
    def url(self) -> str:
        """The base URL, ``http://HOST:PORT`` (the server must be started)."""
        if self._server is None:
            raise RuntimeError("the embedding stub is not running: call start() first")
        return f"http://{self.host}:{self._port}"

    @property
    def endpoint(self) -> str:
        """The embeddings endpoint, ``url + "/v1/embeddings"``."""
        return self.url + EMBEDDINGS_PATH

    def start(self) -> EmbeddingStub:
        """Bind and serve in a daemon thread; returns the stub. Raises if already running."""
        if self._server is not None:
            raise RuntimeError("the embedding stub is already running")
        self._stopping.clear()
        server = _Server((self.host, self._port), _Handler, self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"embedding-stub-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: end slow answers, close open connections, join the threads (each
        within ``timeout`` seconds). Idempotent; the stub may be started again after."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()  # returns once serve_forever has returned
        server.server_close()
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            connections = list(self._connections.items())
        for _, sock in connections:
            # A keep-alive connection's pending read returns at once (OSError: already closed).
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for handler_thread, _ in connections:
            handler_thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> EmbeddingStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- answers --------------------------------------------------------------------------------

    def vector_for(self, text: str, dimensions: int | None = None) -> list[float]:
        """The unit vector the stub answers for ``text`` (``dimensions`` long, default the
        stub's): Gaussian draws seeded by the text's SHA-256, normalised."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {text!r}")
        size = self.dimensions if dimensions is None else check_int("dimensions", dimensions)
        if size < 1:
            raise ValueError(f"dimensions must be >= 1, got {size!r}")
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
        draw = random.Random(seed).gauss
        vector = [draw(0.0, 1.0) for _ in range(size)]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]

    # -- faults ---------------------------------------------------------------------------------

    def inject(
        self,
        kind: FaultKind | int,
        *,
        times: int | None = None,
        seconds: float | None = None,
        retry_after: float | None = None,
        delay: float = 1.0,
    ) -> ScheduledFault:
        """Queue a fault for the next ``times`` requests, or every request for ``seconds``
        (the first limit reached ends it), or, with neither, until :meth:`clear`.

        Faults are served in the order they were queued: one that is over gives way to the
        next. Returns the :class:`ScheduledFault` (its ``served`` counts the requests it got).

        Args:
            kind: a :data:`FaultKind`, or a status code as an int.
            times: how many requests get it (>= 1).
            seconds: for how long (real time, > 0), from now.
            retry_after: the ``Retry-After`` to send, in seconds: a 429 always sends one
                (:data:`DEFAULT_RETRY_AFTER` when not given), a 503 or 504 only when given.
            delay: how long a ``"slow"`` answer waits (seconds, >= 0).
        """
        name = _fault_kind(kind)
        count = check_optional_int("times", times, minimum=1)
        duration = check_optional_float("seconds", seconds, positive=True)
        hint = check_optional_float("retry_after", retry_after, minimum=0.0)
        if hint is not None and name not in ("429", "503", "504"):
            raise ValueError(f"retry_after applies to 429, 503 and 504 faults, not {name!r}")
        if name == "429" and hint is None:
            hint = DEFAULT_RETRY_AFTER
        wait = check_float("delay", delay, minimum=0.0)
        fault = ScheduledFault(
            kind=name,
            remaining=count,
            until=None if duration is None else time.monotonic() + duration,
            retry_after=hint,
            delay=wait,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> tuple[ScheduledFault, ...]:
        """The faults queued and still live, in the order they will be served."""
        now = time.monotonic()
        with self._lock:
            return tuple(f for f in self._faults if f.live(now))

    # -- counts ---------------------------------------------------------------------------------

    def stats(self) -> StubStats:
        """A snapshot of the counts."""
        with self._lock:
            return self._counts.snapshot()

    def reset_counts(self) -> None:
        """Zero the counts (the faults and the limit's bucket are kept)."""
        with self._lock:
            self._counts = _Counts()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self.running else "stopped"
        return f"EmbeddingStub({where}, dimensions={self.dimensions}, rpm={self.rpm})"

    # -- handling one request (called by the handler threads) ------------------------------------

    def _register(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections[threading.current_thread()] = sock
        if self._stopping.is_set():  # accepted as stop() began: it may not have seen us
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _unregister(self) -> None:
        with self._lock:
            self._connections.pop(threading.current_thread(), None)

    def _next_fault(self, now: float) -> ScheduledFault | None:
        """Take the first live fault for this request (lock held)."""
        faults = self._faults
        while faults:
            fault = faults[0]
            if fault.live(now):
                fault.served += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                self._counts.by_fault[fault.kind] += 1
                return fault
            faults.popleft()
        return None

    def set_limit(self, rpm: int | None, *, burst: int | None = None) -> None:
        """Change the requests-per-window limit while running (``None``: no limit); ``burst``
        defaults as in the constructor. The bucket keeps its tokens, capped at the new burst."""
        rpm = check_optional_int("rpm", rpm, minimum=1)
        burst = check_optional_int("burst", burst, minimum=1)
        if burst is not None and rpm is None:
            raise ValueError("burst needs rpm: there is no bucket without a limit")
        if rpm is not None and burst is None:
            burst = max(1, math.ceil(rpm / self.window))
        with self._lock:
            now = time.monotonic()
            if self.rpm is not None and self.burst is not None:
                self._refill(now, self.rpm, self.burst)
            else:
                self._tokens = float(burst or 0)
                self._refilled_at = now
            self.rpm, self.burst = rpm, burst
            self._tokens = min(self._tokens, float(burst or 0))

    def _refill(self, now: float, limit: int, burst: int) -> float:
        """Refill the limit's bucket to ``now`` (lock held); returns the refill rate per s."""
        rate = limit / self.window
        self._tokens = min(float(burst), self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        return rate

    def _admit(self, now: float) -> _Answer | None:
        """Apply the limit (lock held): ``None`` when admitted (a slot taken), else the 429."""
        limit, burst = self.rpm, self.burst
        if limit is None or burst is None:
            return None
        rate = self._refill(now, limit, burst)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        self._counts.rate_limited += 1
        retry_after = (1.0 - self._tokens) / rate
        reset = (burst - self._tokens) / rate
        message = (
            f"Rate limit reached for requests on the embedding stub: Limit {limit} per "
            f"{self.window:g}s, Used {limit}, Requested 1. Please try again in "
            f"{max(1, math.ceil(retry_after * 1000))}ms."
        )
        return _Answer(
            429,
            _error_body(429, message),
            {
                "Retry-After": _seconds(retry_after),
                "retry-after-ms": str(max(1, math.ceil(retry_after * 1000))),
                "x-ratelimit-limit-requests": str(limit),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": _seconds(reset) + "s",
            },
        )

    def _limit_headers(self, now: float) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers of an admitted answer (lock held, just refilled)."""
        limit, burst = self.rpm, self.burst
        if limit is None or burst is None:
            return {}
        reset = (burst - self._tokens) * self.window / limit
        return {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(math.floor(self._tokens)),
            "x-ratelimit-reset-requests": _seconds(reset) + "s",
        }

    def _fault_answer(self, fault: ScheduledFault) -> _Answer:
        """The answer of an error fault (a status code, or a disconnect)."""
        if fault.kind == "disconnect":
            return _Answer(0, b"", close=True)
        status = int(fault.kind)
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = _seconds(fault.retry_after)
            headers["retry-after-ms"] = str(math.ceil(fault.retry_after * 1000))
        param = "input" if status == 400 else None
        return _Answer(status, _error_body(status, param=param), headers)

    def _handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> _Answer:
        """Everything but the socket: returns the answer for one request."""
        with self._lock:
            self._counts.requests += 1
        if path.split("?", 1)[0] != EMBEDDINGS_PATH:
            return _Answer(
                404,
                _error_body(404, f"Invalid URL ({method} {path})", param=None),
            )
        if method != "POST":
            answer = _Answer(
                405, _error_body(400, f"Method {method} not allowed on {EMBEDDINGS_PATH}")
            )
            answer.headers["Allow"] = "POST"
            return answer
        if self.api_key is not None:
            auth = headers.get("authorization", "")
            if auth != f"Bearer {self.api_key}":
                message = (
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                    if not auth
                    else None
                )
                return _Answer(401, _error_body(401, message))
        parsed = _parse_request(body)
        if isinstance(parsed, _Answer):
            return parsed
        model, texts = parsed
        now = time.monotonic()
        with self._lock:
            fault = self._next_fault(now)
            if fault is not None and fault.kind not in _ANSWERING_FAULTS:
                return self._fault_answer(fault)
            refused = self._admit(now)
            if refused is not None:
                return refused
            limit_headers = self._limit_headers(now)
        wait = self.latency + (fault.delay if fault is not None and fault.kind == "slow" else 0.0)
        if wait > 0.0 and self._stopping.wait(wait):
            return _Answer(0, b"", close=True)  # stopping: give up the answer
        if fault is not None and fault.kind == "malformed":
            return _Answer(
                200,
                b'{"object": "list", "data": [{"object": "embedding", "index": 0, "embedd',
                {**limit_headers, "Content-Type": "application/json"},
            )
        size = self.dimensions
        if fault is not None and fault.kind == "wrong_dimensions":
            size = size - 1 if size > 1 else 2
        data = [
            {"object": "embedding", "index": i, "embedding": self.vector_for(text, size)}
            for i, text in enumerate(texts)
        ]
        if fault is not None and fault.kind == "shuffled":
            data.reverse()
        tokens = sum(_tokens(text) for text in texts)
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        with self._lock:
            self._counts.inputs += len(texts)
            self._counts.by_batch_size[len(texts)] += 1
        return _Answer(200, json.dumps(payload).encode(), limit_headers)

    def _answered(self, status: int) -> None:
        with self._lock:
            if status:
                self._counts.by_status[status] += 1
            else:
                self._counts.disconnected += 1


def _parse_request(body: bytes) -> tuple[str, list[str]] | _Answer:
    """``(model, inputs)`` of a valid request body, else the 400 to send."""
    try:
        request: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _Answer(400, _error_body(400, "The request body is not valid JSON."))
    if not isinstance(request, dict):
        return _Answer(400, _error_body(400, "The request body must be a JSON object."))
    model = request.get("model")
    if not isinstance(model, str) or not model:
        return _Answer(400, _error_body(400, "you must provide a model parameter", param="model"))
    raw = request.get("input")
    texts: list[str]
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and all(isinstance(t, str) for t in raw):
        texts = raw
    else:
        return _Answer(400, _error_body(400, param="input"))
    if not texts or len(texts) > MAX_INPUTS or any(not t for t in texts):
        return _Answer(400, _error_body(400, param="input"))
    encoding = request.get("encoding_format", "float")
    if encoding != "float":
        return _Answer(
            400,
            _error_body(
                400,
                f"encoding_format {encoding!r} is not supported by the stub (only 'float')",
                param="encoding_format",
            ),
        )
    return model, texts


class _Server(ThreadingHTTPServer):
    """The HTTP server, knowing its stub; handler threads are daemons tracked by the stub."""

    daemon_threads = True
    block_on_close = False  # the stub joins its handler threads itself, after closing them
    request_queue_size = 128  # many clients connecting at once (5 would drop SYNs: 1 s stalls)

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        stub: EmbeddingStub,
    ) -> None:
        self.stub = stub
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request (a reset, a timeout) is routine here, not an error
        to print; anything else is still reported."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """One connection (keep-alive: HTTP/1.1, every answer with a Content-Length)."""

    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes: without TCP_NODELAY the body waits for the
    # client's delayed ACK of the headers (~40 ms per answer on Linux).
    disable_nagle_algorithm = True
    server: _Server
    server_version = "sage-resilience-embedding-stub"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.server.stub._register(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.stub._unregister()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the stub counts requests instead of logging them."""

    def _body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            return None
        if size < 0:
            return None
        return self.rfile.read(size)

    def _serve(self) -> None:
        stub = self.server.stub
        body = self._body()
        if body is None:
            answer = _Answer(400, _error_body(400, "invalid Content-Length"), close=True)
            with stub._lock:
                stub._counts.requests += 1
        else:
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = stub._handle(self.command, self.path, headers, body)
        stub._answered(answer.status)
        if answer.status == 0:  # a disconnect: close without a byte of answer
            self.close_connection = True
            return
        try:
            self.send_response(answer.status, _REASONS.get(answer.status))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                if name != "Content-Type":
                    self.send_header(name, value)
            if answer.close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(answer.body)
        except OSError:  # the client went away meanwhile
            self.close_connection = True

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()
