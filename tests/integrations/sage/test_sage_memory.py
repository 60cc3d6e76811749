"""The memory service against the real PostgreSQL (through the fault proxy) and the real HTTP
embedding stub: no acknowledged save lost or stored twice under any fault, the database down
costs no amplification and recovery is quick, bad requests are raised once, and search degrades
rather than fails while embeddings are down.

These tests use real servers and real sockets, so they take real time (a few seconds in all);
they wait on the servers, never on sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("httpx", reason="the Sage wrappers need the 'sage' extra")

from sage_resilience.adaptive import Priority, current_priority, retry_budgets
from sage_resilience.core import CircuitBreakerOpenError, RejectedError
from sage_resilience.integrations.sage import (
    EmbeddingClient,
    EmbeddingRequestError,
)
from sage_resilience.integrations.sage.db import ResilientDatabase
from sage_resilience.integrations.sage.memory import MemoryService, SearchResult
from sage_resilience.integrations.sage.rig import EmbeddingStub
from sage_resilience.integrations.sage.rig.proxy import FaultProxy

pytestmark = pytest.mark.service


@pytest.fixture(autouse=True)
def _fresh_retry_budgets() -> Iterator[None]:
    """Policies share retry budgets by name, process-wide: each test starts clean."""
    retry_budgets.clear()
    yield
    retry_budgets.clear()


@dataclass
class Rig:
    stub: EmbeddingStub
    proxy: FaultProxy
    db: ResilientDatabase
    embeddings: EmbeddingClient
    memory: MemoryService


@pytest.fixture
async def rig(pg_dsn: str) -> AsyncIterator[Rig]:
    """The memory service over the stub and, through a fault proxy, a database of its own."""
    with EmbeddingStub(dimensions=8) as stub, FaultProxy() as proxy:
        embeddings = EmbeddingClient(stub.url, request_timeout=2.0)
        db = ResilientDatabase(proxy.dsn(pg_dsn), command_timeout=0.5, connect_timeout=0.5)
        memory = MemoryService(db, embeddings)
        await db.connect()
        await memory.setup()
        try:
            yield Rig(stub, proxy, db, embeddings, memory)
        finally:
            proxy.forward()
            await db.close()
            await embeddings.aclose()


async def rows_per_content(pg_dsn: str) -> dict[str, int]:
    """How many rows hold each content, read straight from the server (no proxy, no policy)."""
    import asyncpg

    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT content, count(*) AS n FROM memories GROUP BY content")
    finally:
        await conn.close()
    return {row["content"]: row["n"] for row in rows}


async def test_save_then_search_ranks_the_closest_first(rig: Rig) -> None:
    """Saved memories come back from a search, the exact text first with similarity 1."""
    ids = [await rig.memory.save(f"note {i} about topic {i % 3}") for i in range(6)]
    ids += await rig.memory.save_many(["bulk one", "bulk two"])
    assert len(set(ids)) == 8
    assert await rig.memory.count() == 8
    found = await rig.memory.search("note 4 about topic 1", limit=3)
    assert not found.degraded and len(found) == 3
    assert found.memories[0].content == "note 4 about topic 1"
    assert found.memories[0].score == pytest.approx(1.0, abs=1e-5)
    scores = [m.score for m in found.memories]
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    got = await rig.memory.get(ids[4])
    assert got is not None and got.content == "note 4 about topic 1"


FAULTS = ["reset", "drop_reply", "blackhole", "latency", "refuse"]


def inject(proxy: FaultProxy, fault: str) -> None:
    if fault == "drop_reply":
        proxy.drop_reply(times=3)
    elif fault == "latency":
        proxy.latency(0.3)
    else:
        getattr(proxy, fault)()


@pytest.mark.parametrize("fault", FAULTS)
async def test_no_acknowledged_save_is_lost_or_stored_twice(
    rig: Rig, pg_dsn: str, fault: str
) -> None:
    """Saves run concurrently while the proxy misbehaves: every save acknowledged with an id is
    stored exactly once; one that raised is stored at most once."""
    acked: dict[str, str] = {}
    failed: dict[str, BaseException] = {}

    async def saver(worker: int) -> None:
        for i in range(12):
            content = f"{fault} save {worker}-{i}"
            try:
                acked[content] = await rig.memory.save(content)
            except Exception as exc:  # the fault's errors: counted, then checked below
                failed[content] = exc

    async def faults() -> None:
        await asyncio.sleep(0.05)  # real-time: let the savers start before the fault
        await asyncio.to_thread(inject, rig.proxy, fault)
        await asyncio.sleep(0.6)  # real-time: the fault lasts long enough to meet saves
        await asyncio.to_thread(rig.proxy.forward)

    await asyncio.gather(faults(), *(saver(w) for w in range(4)))
    stats = rig.proxy.stats()
    if fault == "drop_reply":
        assert stats.replies_dropped >= 1  # the fault really met statements
    counts = await rows_per_content(pg_dsn)
    assert len(acked) + len(failed) == 48
    assert acked, "no save succeeded at all"
    for content in acked:
        assert counts.get(content) == 1, (content, counts.get(content))
    for content in failed:
        assert counts.get(content, 0) <= 1
    assert sum(counts.values()) <= 48
    for exc in failed.values():  # the failures are the database's, not the test's
        assert not isinstance(exc, AssertionError)


async def test_database_down_fails_fast_without_amplification_and_recovers_quickly(
    rig: Rig,
) -> None:
    """With the database refusing connections, saves fail and the breaker opens; after that a
    save is refused within the policy's hold, database attempts stay near one per save (the
    seed made 27), and once the database is back the first save succeeds within a second."""
    await rig.memory.save("before the outage")
    await asyncio.to_thread(rig.proxy.refuse)
    await asyncio.to_thread(rig.proxy.sever)
    budget = rig.db.policy.budget
    assert budget is not None
    before, granted_before = rig.db.stats(), budget.stats().retries
    breaker = rig.db.policy.breaker
    assert breaker is not None
    outcomes: list[tuple[float, BaseException | None]] = []
    opened: int | None = None  # the first save after which the breaker was not closed
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            await rig.memory.save("during the outage")
        except Exception as exc:
            outcomes.append((time.monotonic() - start, exc))
        else:
            outcomes.append((time.monotonic() - start, None))
        if opened is None and breaker.state.name != "CLOSED":
            opened = len(outcomes)
    after, budget_after = rig.db.stats(), budget.stats()
    saves = len(outcomes)
    attempts = after.attempts - before.attempts
    granted = budget_after.retries - granted_before
    assert all(exc is not None for _, exc in outcomes)
    # Every attempt beyond one per save is a retry the budget granted, within its allowance:
    # no storm (the seed's three retrying layers made 27 attempts per save).
    assert attempts <= saves + granted, (attempts, saves, granted)
    assert granted <= budget_after.allowance
    assert attempts < 2 * saves, (attempts, saves)
    # The breaker opened; from then on a save fails within the policy's hold (it waits for
    # the breaker's next trial, and with one caller it is that trial), never after retrying
    # for seconds as the seed's backoff did.
    assert opened is not None and opened < saves
    assert all(isinstance(exc, CircuitBreakerOpenError | OSError) for _, exc in outcomes[opened:])
    hold = rig.db.policy.options.hold
    assert max(took for took, _ in outcomes[opened:]) <= hold + 0.2

    await asyncio.to_thread(rig.proxy.forward)
    back = time.monotonic()
    while True:
        try:
            await rig.memory.save("after the outage")
            break
        except Exception:
            assert time.monotonic() - back < 3.0, "the database never came back"
    assert time.monotonic() - back <= 1.0


async def test_bad_request_from_embeddings_is_raised_once_and_breaks_nothing(rig: Rig) -> None:
    """A 400 is the caller's error: raised after one request, no row written, and neither
    breaker has counted a failure."""
    rig.stub.reset_counts()
    rig.stub.inject(400, times=1)
    with pytest.raises(EmbeddingRequestError):
        await rig.memory.save("rejected text")
    assert rig.stub.stats().requests == 1
    assert await rig.memory.count() == 0
    for policy in (rig.embeddings.policy, rig.db.policy):
        breaker = policy.breaker
        assert breaker is not None
        assert breaker.stats().failures == 0
        assert breaker.state.name == "CLOSED"
    assert await rig.memory.save("accepted text")


async def test_search_degrades_while_embeddings_are_down_and_says_so(rig: Rig) -> None:
    """With the embedding service failing, search returns the most recent memories, unranked,
    marked degraded with the reason; once it is back, searches are ranked again."""
    for i in range(4):
        await rig.memory.save(f"memory {i}")
    rig.stub.inject(503, seconds=30.0)
    result = await rig.memory.search("memory 1", limit=3)
    assert isinstance(result, SearchResult)
    assert result.degraded
    assert result.reason is not None and "503" in result.reason
    assert [m.content for m in result.memories] == ["memory 3", "memory 2", "memory 1"]
    assert all(m.score is None for m in result.memories)
    rig.stub.clear()
    # The embedding breaker may still be open from the 503s: degraded (refused) until its trial.
    deadline = time.monotonic() + 3.0
    while True:
        result = await rig.memory.search("memory 1", limit=3)
        if not result.degraded:
            break
        assert "CircuitBreakerOpenError" in (result.reason or "") or "503" in (result.reason or "")
        assert time.monotonic() < deadline, "search never recovered"
    assert result.memories[0].content == "memory 1"


async def test_bad_input_raises_before_any_request(rig: Rig) -> None:
    rig.stub.reset_counts()
    with pytest.raises(ValueError, match="content"):
        await rig.memory.save("   ")
    with pytest.raises(TypeError, match="content"):
        await rig.memory.save(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        await rig.memory.search("q", limit=0)
    with pytest.raises(ValueError, match="memory_id"):
        await rig.memory.save("text", memory_id="not-a-uuid")
    with pytest.raises(ValueError, match="table"):
        MemoryService(rig.db, rig.embeddings, table="drop table")
    assert rig.stub.stats().requests == 0


async def test_calls_run_at_their_priority(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Searches embed at HIGH, saves at NORMAL, back-fills at LOW: the levels the adaptive
    limiters shed by."""
    seen: list[Priority] = []
    real_embed, real_many = rig.embeddings.embed, rig.embeddings.embed_many

    async def embed(text: str) -> Any:
        seen.append(current_priority())
        return await real_embed(text)

    async def embed_many(texts: Any) -> Any:
        seen.append(current_priority())
        return await real_many(texts)

    monkeypatch.setattr(rig.embeddings, "embed", embed)
    monkeypatch.setattr(rig.embeddings, "embed_many", embed_many)
    await rig.memory.save("x")
    await rig.memory.search("x")
    await rig.memory.save_many(["y", "z"])
    assert seen == [Priority.NORMAL, Priority.HIGH, Priority.LOW]


def test_rejections_degrade_search_too() -> None:
    """A refusal by the embedding client's own policy (its breaker open, its limiter shedding)
    is a reason to degrade, like a transient error: RejectedError is in the fallback kinds."""
    from sage_resilience.core import FailureKind, classify
    from sage_resilience.integrations.sage import memory

    assert classify(CircuitBreakerOpenError("embeddings.breaker", 0.1)) in memory._FALLBACK_KINDS
    assert FailureKind.PERMANENT not in memory._FALLBACK_KINDS
    assert issubclass(CircuitBreakerOpenError, RejectedError)
