"""``sage-resilience demo``: a Sage-shaped workload on the real servers, under a fault schedule.

The demo runs the same workload twice, against the machine's real PostgreSQL and the real HTTP
embedding stub, while a schedule of faults is injected, and prints what it measured:

* **adaptive**: :class:`~sage_resilience.integrations.sage.memory.MemoryService` over
  :class:`~sage_resilience.integrations.sage.db.ResilientDatabase` and
  :class:`~sage_resilience.integrations.sage.embeddings.EmbeddingClient` (each dependency under
  its adaptive policy, at its defaults);
* **seed**: Sage's original decorator configuration (:func:`.sim.policies.seed_layer`: a retry of
  3 attempts with 0.5 s exponential backoff, retrying every exception, over a breaker that opens
  after 5 failures in 60 s and stays open 60 s) at each of three nested layers: the memory
  manager's methods, the storage calls and the database calls, over a raw asyncpg pool and raw
  httpx requests. As in the seed, the storage layer draws a memory's id inside the retried call
  and inserts it with a plain ``INSERT`` (``DESIGN.md``: "non-idempotent INSERTs were retried
  with fresh ids"). Not modelled: the seed's embedding client answered a 429 or a 503 with a
  random vector; here every failed embedding request raises, in both configurations.

**The workload.** Operations start at a steady ``rate`` (open loop: one every ``1 / rate``
seconds, whatever the earlier ones do), a seeded mix of saves (``save_share``) and searches
(``limit`` 5); both configurations get the same sequence. Every operation has a client
deadline (``deadline``): one that has not returned by then is cancelled and counts as failed.
Both configurations use the same client timeouts (statement, connection and pool acquisition
``db_timeout``; HTTP ``http_timeout``) and a pool of ``pool_size`` connections.

**The faults** (:data:`SCHEDULE`, laid out for a 30 s run and scaled to ``duration``): a
:class:`~sage_resilience.integrations.sage.rig.proxy.FaultProxy` stands between the clients and
PostgreSQL and refuses, resets, blackholes, slows down or drops replies; the
:class:`~sage_resilience.integrations.sage.rig.EmbeddingStub` answers 503 for a while, and its
requests-per-second limit is lowered below the offered rate for a while (429 with
``Retry-After``). Each episode has a start and an end (when the change was in force).

**Definitions** (also printed, see :data:`DEFINITIONS`). An operation *succeeds* when it
returns before its deadline (a degraded search, answered with the most recent memories because
the embedding service failed, counts as a success and is also counted apart); it is *good* when
it succeeds undegraded. An operation *met* an episode when its lifetime ``[start, end]``
overlaps the episode's ``[start, end]``. The *auto-recovery rate* is the share of operations
that met at least one episode and still succeeded. *Time to first success*: from an episode's
end to the first good operation that completes after it. *Time to normal*: from an episode's
end to the start of the first window (1 s for a 30 s run) in which at least
:data:`NORMAL_SHARE` of the operations started in it are good. Both are searched up to the next
episode's start (or the end of the run); an episode with no such point is *censored* at that
bound, and the mean and p95 over episodes are then lower bounds (printed with ``>=``).

**Overhead** on the healthy path, against the servers directly (no proxy): ``SELECT 1`` through
``ResilientDatabase.fetchval`` against ``fetchval`` on the same asyncpg pool (and, to show
where the difference comes from, the pool used as one attempt of ``ResilientDatabase`` uses it:
acquire and release with a timeout); one embedding through ``EmbeddingClient.embed`` against
the same ``httpx`` client posting and reading the answer. These calls are timed one by one, a
bare call and a wrapped one after the other (which goes first alternates); the figures are the
medians of each side and the median of the paired differences (with their interquartile
range). The policies alone around a no-op coroutine are timed in rounds of many calls per side
(one call is too short to time alone), alternating, and the figures are medians over rounds.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import random
import statistics
import time
import uuid
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, ParamSpec, TypeVar
from urllib.parse import urlsplit

import asyncpg
import httpx

from ..adaptive import AdaptiveOptions, AdaptivePolicy, BudgetRegistry
from ..core import SYSTEM_CLOCK, Pipeline
from ..integrations.sage.db import ResilientDatabase, database_options
from ..integrations.sage.embeddings import EMBEDDING_OPTIONS, EmbeddingClient
from ..integrations.sage.memory import MemoryService
from ..integrations.sage.rig import DEFAULT_ADMIN_DSN, EmbeddingStub, TemporaryDatabase
from ..integrations.sage.rig.proxy import FaultProxy
from .sim.policies import seed_layer

__all__ = [
    "CONFIGURATIONS",
    "DEFINITIONS",
    "DemoError",
    "NORMAL_SHARE",
    "SCHEDULE",
    "DemoConfig",
    "EpisodeRun",
    "EpisodeSpec",
    "OpRecord",
    "SeedMemoryService",
    "demo_config",
    "format_report",
    "integrity",
    "run_demo",
    "summarize",
    "wilson",
    "write_json",
]

P = ParamSpec("P")
T = TypeVar("T")

REFERENCE_DURATION: Final = 30.0
"""The run length :data:`SCHEDULE` is laid out for; other durations scale it."""

NORMAL_SHARE: Final = 0.95
"""The share of good operations that makes a window "normal" (see the module docstring)."""

DIMENSIONS: Final = 16
"""The length of the stub's vectors."""

SEARCH_LIMIT: Final = 5
"""Memories asked for by a search."""

CONFIGURATIONS: Final = ("adaptive", "seed")
"""The configurations compared, in the order they run."""

Target = Literal["database", "embeddings"]


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoConfig:
    """What ``sage-resilience demo`` runs (see the module docstring). A bad value raises
    ``ValueError`` naming the field.

    Attributes:
        dsn: an admin DSN of the PostgreSQL server (the demo creates and drops a database).
        duration: seconds of workload per configuration (2 to 3600).
        rate: operations started per second (up to 1000).
        save_share: the share of saves among operations (the rest are searches).
        deadline: the client's deadline per operation, seconds.
        seed: seeds the workload's mix and texts and the policies' jitter.
        compare_seed: also run the seed's configuration.
        quick: a short run (for tests); only recorded.
        pool_size: connections per pool.
        db_timeout: statement, connection and pool-acquisition timeout, seconds.
        http_timeout: the HTTP client's timeout, seconds.
        db_pairs: calls per side of the database overhead (one bare and one wrapped call
            after another, each timed).
        http_pairs: the same for the embedding client.
        noop_rounds, noop_calls: rounds, and calls per side per round, of the policies around
            a no-op (timed per round: one call is too short to time alone).
    """

    dsn: str = DEFAULT_ADMIN_DSN
    duration: float = 30.0
    rate: float = 40.0
    save_share: float = 0.7
    deadline: float = 5.0
    seed: int = 1
    compare_seed: bool = True
    quick: bool = False
    pool_size: int = 10
    db_timeout: float = 1.0
    http_timeout: float = 1.0
    db_pairs: int = 3000
    http_pairs: int = 1000
    noop_rounds: int = 30
    noop_calls: int = 2000

    def __post_init__(self) -> None:
        if not isinstance(self.dsn, str) or not self.dsn.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError(f"dsn must be a postgresql:// URL, got {self.dsn!r}")
        _check_number("duration", self.duration, low=2.0, high=3600.0)
        _check_number("rate", self.rate, low=0.0, high=1000.0, open_low=True)
        _check_number("save_share", self.save_share, low=0.0, high=1.0)
        _check_number("deadline", self.deadline, low=0.0, high=120.0, open_low=True)
        _check_number("db_timeout", self.db_timeout, low=0.0, high=60.0, open_low=True)
        _check_number("http_timeout", self.http_timeout, low=0.0, high=60.0, open_low=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        for name in (
            "pool_size",
            "db_pairs",
            "http_pairs",
            "noop_rounds",
            "noop_calls",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")

    @property
    def scale(self) -> float:
        """The factor :data:`SCHEDULE` is scaled by."""
        return self.duration / REFERENCE_DURATION

    @property
    def window(self) -> float:
        """The window of "time to normal": 1 s for runs of 30 s and more, less for shorter
        runs (at least 0.2 s), so that it fits between episodes."""
        return min(1.0, max(0.2, self.scale))

    @property
    def operations(self) -> int:
        """Operations started per configuration."""
        return max(1, math.floor(self.duration * self.rate))


_QUICK: Final[dict[str, Any]] = {
    "duration": 4.0,
    "deadline": 1.5,
    "db_pairs": 200,
    "http_pairs": 60,
    "noop_rounds": 5,
    "noop_calls": 500,
}


def demo_config(*, quick: bool = False, **given: Any) -> DemoConfig:
    """A :class:`DemoConfig` from the given fields (``None`` values mean "the default");
    ``quick`` makes the defaults those of a run of a few seconds (4 s per configuration)."""
    fields: dict[str, Any] = dict(_QUICK) if quick else {}
    fields.update({k: v for k, v in given.items() if v is not None})
    return DemoConfig(quick=quick, **fields)


def _check_number(
    name: str, value: object, *, low: float, high: float, open_low: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (open_low and value == low) or value > high:
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        raise ValueError(f"{name} must be {bound} and <= {high:g}, got {value!r}")


# -- the fault schedule ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EpisodeSpec:
    """One fault of the schedule: ``start`` and ``end`` in seconds of a 30 s run; ``pulse``:
    the fault is applied again every ``pulse`` seconds (real time) until the end."""

    name: str
    target: Target
    start: float
    end: float
    what: str
    pulse: float | None = None


SCHEDULE: Final[tuple[EpisodeSpec, ...]] = (
    EpisodeSpec("db-outage", "database", 2.0, 5.0, "PostgreSQL refuses connections"),
    EpisodeSpec("db-resets", "database", 7.0, 8.0, "every connection, open or new, is reset"),
    EpisodeSpec("db-blackhole", "database", 10.0, 12.0, "connections hang: nothing goes through"),
    EpisodeSpec("db-latency", "database", 14.0, 16.5, "+25 ms on every chunk each way"),
    EpisodeSpec("embed-503", "embeddings", 18.5, 20.5, "the embedding service answers 503"),
    EpisodeSpec(
        "embed-429", "embeddings", 22.5, 25.0, "its rate limit drops to half the offered rate"
    ),
    EpisodeSpec(
        "db-drop-reply",
        "database",
        27.0,
        28.0,
        "every 0.1 s, the next statement runs and its reply is lost",
        pulse=0.1,
    ),
)
"""The faults, in order (each heals before the next begins)."""

_LATENCY: Final = 0.025  # seconds per chunk in db-latency: +50 ms per round trip


@dataclass(slots=True)
class EpisodeRun:
    """An episode as it happened in one run: times in seconds from the run's start (when the
    fault was in force and when it was lifted) and what was injected (counts)."""

    name: str
    target: Target
    what: str
    start: float
    end: float
    injected: dict[str, int] = field(default_factory=dict)


class _Rig:
    """The servers of one demo: the proxy in front of PostgreSQL and the embedding stub."""

    def __init__(self, proxy: FaultProxy, stub: EmbeddingStub, dsn: str, rate: float) -> None:
        self.proxy = proxy
        self.stub = stub
        self.direct_dsn = dsn
        self.dsn = proxy.dsn(dsn) + ("&" if "?" in dsn else "?") + "sslmode=disable"
        self.rate = rate

    def _set_limit(self, per_second: int | None) -> None:
        # The stub's window is 1 s: a limit per second.
        self.stub.set_limit(
            per_second, burst=None if per_second is None else max(1, per_second // 4)
        )

    def apply(self, spec: EpisodeSpec) -> None:
        """Put ``spec``'s fault in force (blocking: call it from a thread)."""
        proxy, stub = self.proxy, self.stub
        match spec.name:
            case "db-outage":
                proxy.refuse()
            case "db-resets":
                proxy.reset()
            case "db-blackhole":
                proxy.blackhole()
            case "db-latency":
                proxy.latency(_LATENCY)
            case "embed-503":
                stub.inject("503")
            case "embed-429":
                self._set_limit(max(1, round(self.rate / 2)))
            case "db-drop-reply":
                proxy.drop_reply(1)
            case _:
                raise ValueError(f"unknown episode {spec.name!r}")

    def heal(self) -> None:
        """Lift every fault (blocking)."""
        self.proxy.drop_reply(0)
        self.proxy.forward()
        self.stub.clear()
        self._set_limit(None)

    def counts(self) -> dict[str, int]:
        """The fault counters of the proxy and the stub now (blocking)."""
        p = self.proxy.stats()
        s = self.stub.stats()
        return {
            "connections_reset": p.reset,
            "connections_closed": p.closed,
            "bytes_swallowed": p.swallowed,
            "replies_dropped": p.replies_dropped,
            "answered_503": s.by_fault.get("503", 0),
            "answered_429": s.rate_limited,
        }


async def _inject(
    rig: _Rig, schedule: Sequence[EpisodeSpec], scale: float, t0: float
) -> list[EpisodeRun]:
    """Run the schedule from ``t0`` (monotonic); returns the episodes as they happened."""
    runs: list[EpisodeRun] = []
    try:
        for spec in schedule:
            await _sleep_until(t0 + spec.start * scale)
            before = await asyncio.to_thread(rig.counts)
            await asyncio.to_thread(rig.apply, spec)
            episode = EpisodeRun(spec.name, spec.target, spec.what, time.monotonic() - t0, math.nan)
            runs.append(episode)
            end = t0 + spec.end * scale
            if spec.pulse is not None:
                while time.monotonic() + spec.pulse < end:
                    await asyncio.sleep(spec.pulse)
                    await asyncio.to_thread(rig.apply, spec)
            await _sleep_until(end)
            await asyncio.to_thread(rig.heal)
            episode.end = time.monotonic() - t0
            after = await asyncio.to_thread(rig.counts)
            episode.injected = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    finally:
        await asyncio.to_thread(rig.heal)
    return runs


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0.0:
        await asyncio.sleep(delay)


# -- the workload ----------------------------------------------------------------------------------


@dataclass(slots=True)
class OpRecord:
    """One operation of the workload: times in seconds from the run's start.

    ``db_attempts`` and ``embed_attempts`` count the attempts it made at each dependency (a
    call refused by a breaker makes none)."""

    index: int
    kind: Literal["save", "search"]
    text: str
    start: float = 0.0
    end: float = math.nan
    ok: bool = False
    degraded: bool = False
    error: str | None = None
    memory_id: str | None = None
    db_attempts: int = 0
    embed_attempts: int = 0

    @property
    def good(self) -> bool:
        """Succeeded, and not degraded."""
        return self.ok and not self.degraded


_CURRENT: contextvars.ContextVar[OpRecord | None] = contextvars.ContextVar(
    "sage_resilience_demo_op", default=None
)

_VOCABULARY: Final = (
    "postgres vector memory search embedding recall context session agent tool prompt token "
    "index cosine user note project meeting deadline budget design review deploy incident "
    "outage latency retry breaker limit queue backoff cache replica failover schema table"
)
_WORDS: Final = tuple(_VOCABULARY.split())


def _plan(config: DemoConfig) -> list[tuple[Literal["save", "search"], str]]:
    """The operations, in order: the same for every configuration of one seed."""
    rng = random.Random(config.seed)
    plan: list[tuple[Literal["save", "search"], str]] = []
    for i in range(config.operations):
        words = [rng.choice(_WORDS) for _ in range(6)]
        if rng.random() < config.save_share:
            plan.append(("save", f"memory {i:06d}: {' '.join(words)}"))
        else:
            plan.append(("search", " ".join(words[:3])))
    return plan


class _CountingPolicy(AdaptivePolicy):
    """An :class:`AdaptivePolicy` that counts, for the workload's current operation, each
    attempt it runs (``counter`` names the :class:`OpRecord` field). Its decisions are the
    plain policy's: the count is taken inside the attempt."""

    def __init__(
        self,
        name: str,
        options: AdaptiveOptions,
        *,
        counter: Literal["db_attempts", "embed_attempts"],
        budgets: BudgetRegistry,
        random: Callable[[], float],
    ) -> None:
        super().__init__(name, options, budgets=budgets, random=random)
        self._counter = counter

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        record = _CURRENT.get()
        if record is None:
            return await super().acall(fn, *args, **kwargs)
        counter = self._counter

        async def attempt(*a: P.args, **k: P.kwargs) -> T:
            setattr(record, counter, getattr(record, counter) + 1)
            return await fn(*a, **k)

        return await super().acall(attempt, *args, **kwargs)


class SeedMemoryService:
    """Sage's memory manager as the seed protected it (see the module docstring): a seed layer
    around each manager method, each storage call and each database call, over a raw asyncpg
    pool and raw httpx requests.

    Args:
        pool: the asyncpg pool.
        http: the httpx client; ``url`` the embeddings endpoint.
        table: the table (created by :meth:`setup`).
        timeout: the pool acquisition timeout, seconds.
        random: the jitter's random source.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        http: httpx.AsyncClient,
        url: str,
        *,
        table: str,
        timeout: float,
        random: Callable[[], float],
    ) -> None:
        self.pool = pool
        self.http = http
        self.url = url
        self.table = table
        self.timeout = timeout
        self.manager = seed_layer("manager", clock=SYSTEM_CLOCK, random=random)
        self.storage = seed_layer("storage", clock=SYSTEM_CLOCK, random=random)
        self.database = seed_layer("database", clock=SYSTEM_CLOCK, random=random)
        self._insert = f"INSERT INTO {table} (id, content, embedding) VALUES ($1, $2, $3)"
        self._ranked = (
            "SELECT id, content, created_at, ("
            "SELECT sum(a * b) / nullif(sqrt(sum(a * a)) * sqrt(sum(b * b)), 0) "
            f"FROM unnest(embedding, $1::real[]) AS v(a, b)) AS score FROM {table} "
            "ORDER BY score DESC NULLS LAST, created_at DESC LIMIT $2"
        )

    async def setup(self, schema: str) -> None:
        """Run the DDL ``schema`` (not through the layers: before the workload)."""
        await self.pool.execute(schema)

    # The manager's methods.
    async def save(self, content: str) -> str:
        """Embed ``content`` and store it; returns the id stored."""
        return await self.manager.acall(self._save, content)

    async def search(self, query: str, limit: int) -> int:
        """The ``limit`` memories closest to ``query``; returns how many were found."""
        return await self.manager.acall(self._search, query, limit)

    async def _save(self, content: str) -> str:
        vector = await self._embed(content)
        return await self.storage.acall(self._store, content, vector)

    async def _search(self, query: str, limit: int) -> int:
        vector = await self._embed(query)
        rows = await self.storage.acall(self._find, vector, limit)
        return len(rows)

    # The storage calls.
    async def _store(self, content: str, vector: list[float]) -> str:
        memory_id = uuid.uuid4()  # drawn anew by every storage attempt, as the seed did
        await self.database.acall(self._execute, self._insert, memory_id, content, vector)
        return str(memory_id)

    async def _find(self, vector: list[float], limit: int) -> list[asyncpg.Record]:
        return await self.database.acall(self._fetch, self._ranked, vector, limit)

    # The database calls (one attempt each).
    async def _execute(self, query: str, *args: object) -> str:
        _count("db_attempts")
        async with self.pool.acquire(timeout=self.timeout) as connection:
            return await connection.execute(query, *args)

    async def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        _count("db_attempts")
        async with self.pool.acquire(timeout=self.timeout) as connection:
            return await connection.fetch(query, *args)

    # The embedding request (inside the manager's method, as in the seed).
    async def _embed(self, text: str) -> list[float]:
        _count("embed_attempts")
        payload = {"model": "text-embedding-3-small", "input": [text], "encoding_format": "float"}
        response = await self.http.post(self.url, json=payload)
        response.raise_for_status()
        vector: list[float] = response.json()["data"][0]["embedding"]
        return vector


def _count(counter: Literal["db_attempts", "embed_attempts"]) -> None:
    record = _CURRENT.get()
    if record is not None:
        setattr(record, counter, getattr(record, counter) + 1)


_Save = Callable[[str], Awaitable[str]]
_Search = Callable[[str], Awaitable[bool]]  # returns whether the answer was degraded


async def _one(record: OpRecord, save: _Save, search: _Search, deadline: float, t0: float) -> None:
    """Run one operation within its deadline and record how it went."""
    _CURRENT.set(record)
    scope = asyncio.timeout(deadline)
    try:
        async with scope:
            if record.kind == "save":
                record.memory_id = await save(record.text)
            else:
                record.degraded = await search(record.text)
    except Exception as exc:
        if isinstance(exc, TimeoutError) and scope.expired():
            record.error = "deadline"
        else:
            record.error = type(exc).__name__
    else:
        record.ok = True
    finally:
        record.end = time.monotonic() - t0


async def _drive(
    config: DemoConfig, rig: _Rig, save: _Save, search: _Search
) -> tuple[list[OpRecord], list[EpisodeRun], float]:
    """Start the plan's operations at the configured rate while the schedule runs; returns the
    records, the episodes and the time the last operation ended."""
    plan = _plan(config)
    t0 = time.monotonic()
    injector = asyncio.create_task(_inject(rig, SCHEDULE, config.scale, t0))
    records: list[OpRecord] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for i, (kind, text) in enumerate(plan):
            await _sleep_until(t0 + i / config.rate)
            record = OpRecord(i, kind, text, start=time.monotonic() - t0)
            records.append(record)
            tasks.append(asyncio.create_task(_one(record, save, search, config.deadline, t0)))
        await asyncio.gather(*tasks)
        episodes = await injector
    finally:
        for task in (*tasks, injector):
            task.cancel()
        await asyncio.gather(*tasks, injector, return_exceptions=True)
    return records, episodes, time.monotonic() - t0


async def _run_adaptive(config: DemoConfig, rig: _Rig) -> dict[str, Any]:
    """The workload through MemoryService, ResilientDatabase and EmbeddingClient."""
    budgets = BudgetRegistry("demo")
    rng = random.Random(config.seed + 1)
    db = ResilientDatabase(
        rig.dsn,
        min_size=0,
        max_size=config.pool_size,
        policy=_CountingPolicy(
            "database",
            database_options(config.pool_size),
            counter="db_attempts",
            budgets=budgets,
            random=rng.random,
        ),
        command_timeout=config.db_timeout,
        connect_timeout=config.db_timeout,
    )
    embeddings = EmbeddingClient(
        rig.stub.url,
        dimensions=DIMENSIONS,
        request_timeout=config.http_timeout,
        policy=_CountingPolicy(
            "embeddings",
            EMBEDDING_OPTIONS,
            counter="embed_attempts",
            budgets=budgets,
            random=rng.random,
        ),
    )
    service = MemoryService(db, embeddings, table="memories_adaptive")

    async def save(text: str) -> str:
        return await service.save(text)

    async def search(text: str) -> bool:
        result = await service.search(text, SEARCH_LIMIT)
        return result.degraded

    try:
        await db.connect()
        await service.setup()
        records, episodes, observed = await _drive(config, rig, save, search)
    finally:
        await embeddings.aclose()
        await db.close()
    return await _finish(
        config,
        rig,
        table="memories_adaptive",
        records=records,
        episodes=episodes,
        observed=observed,
    )


async def _run_seed(config: DemoConfig, rig: _Rig) -> dict[str, Any]:
    """The workload through the seed's three nested layers over a raw pool and raw httpx."""
    pool = await asyncpg.create_pool(
        rig.dsn,
        min_size=0,
        max_size=config.pool_size,
        timeout=config.db_timeout,
        command_timeout=config.db_timeout,
    )
    http = httpx.AsyncClient(timeout=config.http_timeout)
    rng = random.Random(config.seed + 1)
    seed = SeedMemoryService(
        pool,
        http,
        rig.stub.endpoint,
        table="memories_seed",
        timeout=config.db_timeout,
        random=rng.random,
    )

    async def search(text: str) -> bool:
        await seed.search(text, SEARCH_LIMIT)
        return False  # the seed had no degraded answer

    try:
        await seed.setup(_schema("memories_seed"))
        records, episodes, observed = await _drive(config, rig, seed.save, search)
    finally:
        await http.aclose()
        try:
            async with asyncio.timeout(config.db_timeout):
                await pool.close()
        except Exception:
            pool.terminate()
    return await _finish(
        config,
        rig,
        table="memories_seed",
        records=records,
        episodes=episodes,
        observed=observed,
    )


def _schema(table: str) -> str:
    """The same DDL as ``MemoryService(table=table).schema``."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        "id uuid PRIMARY KEY, content text NOT NULL, embedding real[] NOT NULL, "
        "created_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )


async def _finish(
    config: DemoConfig,
    rig: _Rig,
    *,
    table: str,
    records: list[OpRecord],
    episodes: list[EpisodeRun],
    observed: float,
) -> dict[str, Any]:
    """Check the stored rows against the acknowledged saves and summarise the run."""
    connection = await asyncpg.connect(rig.direct_dsn, timeout=10)
    try:
        rows = await connection.fetch(f"SELECT id::text AS id, content FROM {table}")
    finally:
        await connection.close()
    summary = summarize(records, episodes, duration=config.duration, window=config.window)
    summary["integrity"] = integrity([(row["id"], row["content"]) for row in rows], records)
    summary["observed_s"] = observed
    summary["errors"] = dict(Counter(r.error for r in records if r.error is not None))
    return summary


def integrity(rows: Sequence[tuple[str, str]], records: Sequence[OpRecord]) -> dict[str, int]:
    """What the table holds against what the saves said: ``rows`` are its ``(id, content)``
    pairs (each save's content is unique in a run).

    ``stored_twice``: contents in more than one row (``extra_rows``: the rows beyond the
    first); ``acknowledged_lost``: saves that returned an id whose row is missing or holds
    another content; ``failed_but_stored``: saves that raised but whose content is stored.
    """
    stored = dict(rows)
    copies = Counter(content for _, content in rows)
    acknowledged = {r.memory_id: r.text for r in records if r.ok and r.memory_id is not None}
    failed = {r.text for r in records if r.kind == "save" and not r.ok}
    return {
        "rows": len(rows),
        "acknowledged_saves": len(acknowledged),
        "stored_twice": sum(1 for n in copies.values() if n > 1),
        "extra_rows": sum(n - 1 for n in copies.values() if n > 1),
        "acknowledged_lost": sum(
            1 for key, text in acknowledged.items() if stored.get(key) != text
        ),
        "failed_but_stored": sum(1 for text in failed if copies[text] > 0),
    }


# -- figures ---------------------------------------------------------------------------------------


def wilson(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default); ``(0, 1)`` with no trial."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / trials + z2 / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def _ratio(successes: int, trials: int) -> dict[str, Any]:
    low, high = wilson(successes, trials)
    return {
        "successes": successes,
        "trials": trials,
        "ratio": successes / trials if trials else None,
        "ci95": [low, high],
    }


def _p95(values: Sequence[float]) -> float:
    """The nearest-rank 95th percentile (the largest value for fewer than 20)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _spread(values: Sequence[int]) -> dict[str, Any]:
    return {
        "ops": len(values),
        "mean": statistics.fmean(values) if values else None,
        "max": max(values) if values else None,
    }


def _recovery(values: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """Mean and p95 over episodes of ``(seconds, censored)``; with a censored episode they are
    lower bounds."""
    if not values:
        return {"mean_s": None, "p95_s": None, "censored": 0, "lower_bound": False}
    seconds = [s for s, _ in values]
    censored = sum(1 for _, c in values if c)
    return {
        "mean_s": statistics.fmean(seconds),
        "p95_s": _p95(seconds),
        "censored": censored,
        "lower_bound": censored > 0,
    }


def summarize(
    records: Sequence[OpRecord],
    episodes: Sequence[EpisodeRun],
    *,
    duration: float,
    window: float,
) -> dict[str, Any]:
    """The figures of one run (see the module docstring for each definition)."""
    ok = sum(1 for r in records if r.ok)
    saves = [r for r in records if r.kind == "save"]
    searches = [r for r in records if r.kind == "search"]
    last_end = max((r.end for r in records), default=duration)

    def met(r: OpRecord, e: EpisodeRun) -> bool:
        return r.start <= e.end and r.end >= e.start

    exposed = [r for r in records if any(met(r, e) for e in episodes)]
    outside = [r for r in records if not any(met(r, e) for e in episodes)]
    per_episode: list[dict[str, Any]] = []
    firsts: list[tuple[float, bool]] = []
    normals: list[tuple[float, bool]] = []
    for i, episode in enumerate(episodes):
        bound = episodes[i + 1].start if i + 1 < len(episodes) else last_end
        start_bound = min(bound, duration)
        mine = [r for r in records if met(r, episode)]
        first_ends = [r.end for r in records if r.good and episode.end <= r.end < bound]
        first = (
            (min(first_ends) - episode.end, False)
            if first_ends
            else (max(0.0, bound - episode.end), True)
        )
        normal = _time_to_normal(records, episode.end, start_bound, window)
        firsts.append(first)
        normals.append(normal)
        attempts = [
            r.db_attempts if episode.target == "database" else r.embed_attempts for r in mine
        ]
        started = [r for r in saves if episode.start <= r.start < episode.end]
        per_episode.append(
            {
                "name": episode.name,
                "target": episode.target,
                "what": episode.what,
                "start_s": episode.start,
                "end_s": episode.end,
                "injected": episode.injected,
                "met": _ratio(sum(1 for r in mine if r.ok), len(mine)),
                "degraded": sum(1 for r in mine if r.degraded),
                "errors": dict(Counter(r.error for r in mine if r.error is not None).most_common()),
                "first_success_s": first[0],
                "first_success_censored": first[1],
                "normal_s": normal[0],
                "normal_censored": normal[1],
                "attempts_per_op": _spread(attempts),
                "saves_started": _spread(
                    [
                        r.db_attempts if episode.target == "database" else r.embed_attempts
                        for r in started
                    ]
                ),
            }
        )
    outage = next((e for e in per_episode if e["name"] == "db-outage"), None)
    burst = next((e for e in per_episode if e["name"] == "embed-503"), None)
    return {
        "operations": len(records),
        "saves": len(saves),
        "searches": len(searches),
        "success": _ratio(ok, len(records)),
        "degraded_searches": sum(1 for r in searches if r.degraded),
        "auto_recovery": _ratio(sum(1 for r in exposed if r.ok), len(exposed)),
        "outside_episodes": _ratio(sum(1 for r in outside if r.ok), len(outside)),
        "first_success": _recovery(firsts),
        "normal": _recovery(normals),
        "db_attempts_per_save_in_outage": None if outage is None else outage["saves_started"],
        "embed_requests_per_save_in_503": None if burst is None else burst["saves_started"],
        "db_attempts_per_op": statistics.fmean(r.db_attempts for r in records) if records else None,
        "embed_requests_per_op": statistics.fmean(r.embed_attempts for r in records)
        if records
        else None,
        "latency_ms": _latency(records),
        "episodes": per_episode,
    }


def _time_to_normal(
    records: Sequence[OpRecord], end: float, bound: float, window: float
) -> tuple[float, bool]:
    """``(seconds from end to the first normal window, censored)``: windows of ``window``
    seconds starting at ``end``, ``end + window / 10``, ... and ending by ``bound``."""
    ordered = sorted((r.start, r.good) for r in records if end <= r.start < bound)
    starts = [start for start, _ in ordered]
    good_before = [0]  # good_before[i]: good operations among the first i
    for _, good in ordered:
        good_before.append(good_before[-1] + good)
    step = window / 10.0
    t = end
    while t + window <= bound + 1e-9:
        first = bisect_left(starts, t)
        last = bisect_left(starts, t + window)
        total = last - first
        if total and good_before[last] - good_before[first] >= NORMAL_SHARE * total:
            return (t - end, False)
        t += step
    return (max(0.0, bound - end), True)


def _latency(records: Sequence[OpRecord]) -> dict[str, float | None]:
    durations = sorted((r.end - r.start) * 1000.0 for r in records if r.good)
    if not durations:
        return {"p50": None, "p99": None}
    return {
        "p50": durations[(len(durations) - 1) // 2],
        "p99": durations[max(0, math.ceil(0.99 * len(durations)) - 1)],
    }


# -- overhead --------------------------------------------------------------------------------------


async def _paired(
    bare: Callable[[], Awaitable[object]],
    wrapped: Callable[[], Awaitable[object]],
    *,
    pairs: int,
) -> dict[str, Any]:
    """Per-call µs of ``bare`` and ``wrapped``, one call of each after the other (which goes
    first alternates), each timed: medians over the calls and of the paired differences."""
    for _ in range(max(10, pairs // 10)):  # warm up both (statement caches, connections)
        await bare()
        await wrapped()
    bare_s: list[float] = []
    wrapped_s: list[float] = []
    clock = time.perf_counter
    for i in range(pairs):
        if i % 2:
            start = clock()
            await wrapped()
            middle = clock()
            await bare()
            wrapped_s.append(middle - start)
            bare_s.append(clock() - middle)
        else:
            start = clock()
            await bare()
            middle = clock()
            await wrapped()
            bare_s.append(middle - start)
            wrapped_s.append(clock() - middle)
    return _overhead_figures(bare_s, wrapped_s, calls=pairs, per="call")


async def _batched(
    bare: Callable[[], Awaitable[object]],
    wrapped: Callable[[], Awaitable[object]],
    *,
    rounds: int,
    calls: int,
) -> dict[str, Any]:
    """Per-call µs of ``bare`` and ``wrapped`` timed over ``calls`` calls per side in each
    round (which side goes first alternates): medians over rounds."""
    for _ in range(calls):
        await bare()
        await wrapped()
    bare_s: list[float] = []
    wrapped_s: list[float] = []
    clock = time.perf_counter
    for i in range(rounds):
        for side in ("bare", "wrapped") if i % 2 == 0 else ("wrapped", "bare"):
            fn = bare if side == "bare" else wrapped
            start = clock()
            for _ in range(calls):
                await fn()
            (bare_s if side == "bare" else wrapped_s).append((clock() - start) / calls)
    return _overhead_figures(bare_s, wrapped_s, calls=rounds * calls, per=f"round of {calls}")


def _overhead_figures(
    bare_s: Sequence[float], wrapped_s: Sequence[float], *, calls: int, per: str
) -> dict[str, Any]:
    diffs = [(w - b) * 1e6 for w, b in zip(wrapped_s, bare_s, strict=True)]
    quartiles = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else [diffs[0]] * 3
    bare_median = statistics.median(bare_s) * 1e6
    wrapped_median = statistics.median(wrapped_s) * 1e6
    return {
        "calls": calls,
        "timed_per": per,
        "bare_us": bare_median,
        "wrapped_us": wrapped_median,
        "overhead_us": statistics.median(diffs),
        "overhead_iqr_us": [quartiles[0], quartiles[2]],
        "ratio": wrapped_median / bare_median if bare_median > 0 else None,
    }


async def _noop() -> int:
    return 1


async def _overhead(config: DemoConfig, dsn: str, stub: EmbeddingStub) -> dict[str, Any]:
    """The healthy-path costs (see the module docstring), against the servers directly."""
    out: dict[str, Any] = {}
    db = ResilientDatabase(
        dsn,
        min_size=1,
        max_size=2,
        policy=AdaptivePolicy("database", database_options(2), budgets=BudgetRegistry()),
        command_timeout=10.0,
        connect_timeout=10.0,
    )
    async with db:
        pool = db.pool
        assert pool is not None  # connected
        timeout = db.connect_timeout

        async def raw_select() -> object:
            return await pool.fetchval("SELECT 1")

        async def raw_select_timeouts() -> object:
            # What one attempt of ResilientDatabase does with the pool, without the policy.
            connection = await pool.acquire(timeout=timeout)
            try:
                return await connection.fetchval("SELECT 1")
            finally:
                await pool.release(connection, timeout=timeout)

        async def select() -> object:
            return await db.fetchval("SELECT 1")

        out["database"] = await _paired(raw_select, select, pairs=config.db_pairs)
        out["database_pool_timeouts"] = await _paired(
            raw_select, raw_select_timeouts, pairs=config.db_pairs
        )
    async with httpx.AsyncClient(timeout=10.0) as http:
        client = EmbeddingClient(
            stub.url,
            dimensions=DIMENSIONS,
            http_client=http,
            policy=AdaptivePolicy("embeddings", EMBEDDING_OPTIONS, budgets=BudgetRegistry()),
        )
        payload = {"model": client.model, "input": ["overhead"], "encoding_format": "float"}

        async def raw_embed() -> object:
            response = await http.post(client.url, json=payload)
            response.raise_for_status()
            return response.json()["data"][0]["embedding"]

        async def embed() -> object:
            return await client.embed("overhead")

        out["embeddings"] = await _paired(raw_embed, embed, pairs=config.http_pairs)
    policy = AdaptivePolicy("noop", database_options(10), budgets=BudgetRegistry())
    one_layer = seed_layer("noop", clock=SYSTEM_CLOCK, random=random.Random(0).random)
    three_layers = Pipeline(
        *(
            seed_layer(name, clock=SYSTEM_CLOCK, random=random.Random(0).random)
            for name in ("manager", "storage", "database")
        ),
        name="seed",
    )

    async def adaptive_noop() -> object:
        return await policy.acall(_noop)

    async def seed_noop() -> object:
        return await one_layer.acall(_noop)

    async def seed3_noop() -> object:
        return await three_layers.acall(_noop)

    for name, wrapped in (
        ("adaptive_policy", adaptive_noop),
        ("seed_layer", seed_noop),
        ("seed_three_layers", seed3_noop),
    ):
        out[name] = await _batched(
            _noop, wrapped, rounds=config.noop_rounds, calls=config.noop_calls
        )
    return out


# -- the whole demo --------------------------------------------------------------------------------


class DemoError(RuntimeError):
    """The demo cannot run: the PostgreSQL server cannot be used."""


async def run_demo(
    config: DemoConfig, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns every figure as a JSON-ready dict."""
    say = progress or (lambda _message: None)
    started = time.monotonic()
    doc: dict[str, Any] = {"meta": _meta(config), "definitions": dict(DEFINITIONS)}
    temporary = TemporaryDatabase(config.dsn, prefix="sage_demo")
    try:
        dsn = await temporary.__aenter__()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DemoError(
            f"cannot create a database on the PostgreSQL server {config.dsn}: {exc!r}"
        ) from exc
    try:
        parts = urlsplit(dsn)
        doc["meta"]["server"] = f"{parts.hostname}:{parts.port or 5432}"
        with (
            FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy,
            EmbeddingStub(dimensions=DIMENSIONS, window=1.0) as stub,
        ):
            rig = _Rig(proxy, stub, dsn, config.rate)
            runs: dict[str, Any] = {}
            say(f"adaptive: {config.duration:g} s of workload under the fault schedule")
            runs["adaptive"] = await _run_adaptive(config, rig)
            if config.compare_seed:
                await asyncio.to_thread(rig.heal)
                say(f"seed: {config.duration:g} s of the same workload and schedule")
                runs["seed"] = await _run_seed(config, rig)
            say("overhead on the healthy path")
            doc["overhead"] = await _overhead(config, dsn, stub)
    finally:
        await temporary.__aexit__(None, None, None)
    doc["configurations"] = runs
    doc["schedule"] = [
        {
            "name": s.name,
            "target": s.target,
            "what": s.what,
            "start_s": s.start * config.scale,
            "end_s": s.end * config.scale,
        }
        for s in SCHEDULE
    ]
    doc["meta"]["wall_seconds"] = time.monotonic() - started
    return doc


def _meta(config: DemoConfig) -> dict[str, Any]:
    return {
        "duration_s": config.duration,
        "rate_per_s": config.rate,
        "operations": config.operations,
        "save_share": config.save_share,
        "deadline_s": config.deadline,
        "seed": config.seed,
        "quick": config.quick,
        "pool_size": config.pool_size,
        "db_timeout_s": config.db_timeout,
        "http_timeout_s": config.http_timeout,
        "normal_share": NORMAL_SHARE,
        "normal_window_s": config.window,
        "latency_per_chunk_s": _LATENCY,
    }


DEFINITIONS: Final[dict[str, str]] = {
    "success": "the operation returned before its deadline (a degraded search counts, and is "
    "also counted apart); ratio with a 95 % Wilson interval",
    "met": "an operation met an episode when its lifetime [start, end] overlaps the episode's "
    "[start, end] (it was in flight when the fault began, or started during it)",
    "auto_recovery": "of the operations that met at least one episode, the share that still "
    "succeeded",
    "first_success": "from an episode's end to the end of the first good (successful, "
    "undegraded) operation that completes after it",
    "normal": "from an episode's end to the start of the first window in which at least 95 % "
    "of the operations started are good",
    "censored": "no such point before the next episode (or the end of the run): the bound is "
    "used, and the mean and p95 over episodes are lower bounds (>=); p95 is the nearest rank",
    "db_attempts_per_save_in_outage": "database attempts made by each save started during "
    "db-outage (an attempt refused by a breaker is not one)",
    "stored_twice": "contents stored in more than one row (each save's content is unique)",
    "acknowledged_lost": "saves that returned an id whose row is missing or holds other content",
    "failed_but_stored": "saves that raised but whose content is stored (allowed: the outcome "
    "of a save that failed is unknown to its caller)",
    "overhead": "the median of paired differences in per-call time, wrapped minus bare, on the "
    "healthy servers reached directly; IQR of the same; ratio of the medians",
}
"""How each figure is defined (printed with the table and written to the JSON)."""


# -- the report ------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f} %"


def _ratio_text(r: dict[str, Any]) -> str:
    if not r["trials"]:
        return "- (none)"
    low, high = r["ci95"]
    return (
        f"{_pct(r['ratio'])} [{100 * low:.1f}, {100 * high:.1f}] ({r['successes']}/{r['trials']})"
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _recovery_text(r: dict[str, Any]) -> str:
    if r["mean_s"] is None:
        return "-"
    mark = ">= " if r["lower_bound"] else ""
    text = f"{mark}{r['mean_s']:.2f} / {mark}{r['p95_s']:.2f} s"
    if r["censored"]:
        text += f" ({r['censored']} censored)"
    return text


def _spread_text(s: dict[str, Any] | None) -> str:
    if s is None or not s["ops"]:
        return "- (none)"
    return f"{s['mean']:.1f} (max {s['max']}, {s['ops']} saves)"


def _table(rows: Sequence[Sequence[str]], *, indent: str = "") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def format_report(doc: dict[str, Any]) -> str:
    """The demo's figures as text: the comparison table, each run's episodes, the overhead, and
    the definitions."""
    meta = doc["meta"]
    runs: dict[str, Any] = doc["configurations"]
    names = [n for n in CONFIGURATIONS if n in runs]
    lines = [
        f"sage-resilience demo: {meta['duration_s']:g} s per configuration, "
        f"{meta['rate_per_s']:g} operations/s ({100 * meta['save_share']:.0f} % saves, the rest "
        f"searches), deadline {meta['deadline_s']:g} s per operation, seed {meta['seed']}"
        + (" (quick)" if meta["quick"] else ""),
        f"PostgreSQL {meta['server']} (a temporary database, through a fault proxy) and the "
        "embedding stub; both configurations: pool of "
        f"{meta['pool_size']}, statement/connect timeout {meta['db_timeout_s']:g} s, HTTP "
        f"timeout {meta['http_timeout_s']:g} s",
        "adaptive: MemoryService over ResilientDatabase and EmbeddingClient, each dependency "
        "under its adaptive policy at the defaults",
    ]
    if "seed" in runs:
        lines.append(
            "seed: at the manager, storage and database layers a retry (3 attempts, 0.5 s "
            "exponential backoff, every exception) over a breaker (opens after 5 failures in "
            "60 s, for 60 s), over a raw asyncpg pool and httpx; ids drawn per storage attempt, "
            "plain INSERT; its random-vector fallback for failed embeddings is not modelled"
        )
    lines += ["", "fault schedule (seconds from the start of each run):"]
    lines += _table(
        [
            (s["name"], f"{s['start_s']:.1f}-{s['end_s']:.1f}", s["target"], s["what"])
            for s in doc["schedule"]
        ],
        indent="  ",
    )
    lines.append("")

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> tuple[str, ...]:
        return (label, *(fn(runs[n]) for n in names))

    table = [
        ("", *names),
        row(
            "operations (saves/searches)",
            lambda r: f"{r['operations']} ({r['saves']}/{r['searches']})",
        ),
        row("success ratio [95 % CI]", lambda r: _ratio_text(r["success"])),
        row("degraded searches", lambda r: str(r["degraded_searches"])),
        row("auto-recovery (met a fault, ok)", lambda r: _ratio_text(r["auto_recovery"])),
        row("success outside episodes", lambda r: _ratio_text(r["outside_episodes"])),
        row("first success after, mean/p95", lambda r: _recovery_text(r["first_success"])),
        row("back to normal after, mean/p95", lambda r: _recovery_text(r["normal"])),
        row(
            "DB attempts per save in outage",
            lambda r: _spread_text(r["db_attempts_per_save_in_outage"]),
        ),
        row(
            "embed requests per save in 503s",
            lambda r: _spread_text(r["embed_requests_per_save_in_503"]),
        ),
        row(
            "DB attempts/embed requests per op",
            lambda r: f"{r['db_attempts_per_op']:.2f} / {r['embed_requests_per_op']:.2f}",
        ),
        row(
            "good latency p50/p99",
            lambda r: (
                "-"
                if r["latency_ms"]["p50"] is None
                else f"{r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f} ms"
            ),
        ),
        row("saves stored twice", lambda r: str(r["integrity"]["stored_twice"])),
        row("acknowledged saves lost", lambda r: str(r["integrity"]["acknowledged_lost"])),
        row("failed saves stored anyway", lambda r: str(r["integrity"]["failed_but_stored"])),
    ]
    lines += _table(table)
    for name in names:
        lines += ["", f"{name}, per episode:"]
        episode_rows: list[tuple[str, ...]] = [
            (
                "episode",
                "window",
                "met: ok",
                "first ok",
                "normal",
                "attempts/op",
                "failures (top 2)",
                "injected",
            )
        ]
        for e in runs[name]["episodes"]:
            attempts = e["attempts_per_op"]
            episode_rows.append(
                (
                    e["name"],
                    f"{e['start_s']:.1f}-{e['end_s']:.1f}",
                    f"{e['met']['successes']}/{e['met']['trials']}",
                    (">= " if e["first_success_censored"] else "") + _seconds(e["first_success_s"]),
                    (">= " if e["normal_censored"] else "") + _seconds(e["normal_s"]),
                    "-"
                    if not attempts["ops"]
                    else f"{attempts['mean']:.1f} (max {attempts['max']})",
                    ", ".join(f"{k} {v}" for k, v in list(e["errors"].items())[:2]) or "-",
                    ", ".join(f"{k} {v}" for k, v in e["injected"].items()) or "-",
                )
            )
        lines += _table(episode_rows, indent="  ")
        errors = runs[name]["errors"]
        if errors:
            top = sorted(errors.items(), key=lambda kv: -kv[1])
            lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in top))
    overhead = doc["overhead"]
    lines += [
        "",
        "overhead per call on the healthy path (servers reached directly; database and "
        "embeddings: calls timed one by one, bare and wrapped alternating, medians and the "
        "median of paired differences; no-op: medians over alternating timed rounds):",
    ]
    labels = {
        "database": ("ResilientDatabase.fetchval('SELECT 1')", "pool.fetchval"),
        "database_pool_timeouts": ("  of which: acquire/release timeouts", "pool.fetchval"),
        "embeddings": ("EmbeddingClient.embed (1 text)", "httpx post + json"),
        "adaptive_policy": ("AdaptivePolicy.acall(no-op)", "await no-op"),
        "seed_layer": ("seed layer (retry + breaker)", "await no-op"),
        "seed_three_layers": ("seed, three nested layers", "await no-op"),
    }
    overhead_rows: list[tuple[str, ...]] = [
        ("wrapped", "against", "bare", "wrapped", "overhead [IQR]", "ratio", "calls")
    ]
    for key, (wrapped, bare) in labels.items():
        o = overhead[key]
        low, high = o["overhead_iqr_us"]
        overhead_rows.append(
            (
                wrapped,
                bare,
                f"{o['bare_us']:.1f} µs",
                f"{o['wrapped_us']:.1f} µs",
                f"{o['overhead_us']:+.1f} µs [{low:+.1f}, {high:+.1f}]",
                f"{o['ratio']:.3f}" if key.startswith(("database", "embeddings")) else "-",
                str(o["calls"]),
            )
        )
    lines += _table(overhead_rows, indent="  ")
    lines += ["", "definitions:"]
    lines += [f"  {key}: {text}" for key, text in doc["definitions"].items()]
    lines.append(f"\nwall time {meta['wall_seconds']:.1f} s")
    return "\n".join(lines)


def write_json(doc: dict[str, Any], path: Path) -> None:
    """Write ``doc`` as strict JSON (no NaN) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
