"""The resilient embedding client against the real stub over HTTP on 127.0.0.1: answers,
batching, classification (4xx raised once and ignored by the breaker, 429/503 retried after
their Retry-After), no vector ever invented, and convergence under the provider's RPM limit."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

httpx = pytest.importorskip("httpx", reason="the Sage wrappers need the 'sage' extra")

from sage_resilience.adaptive import AdaptivePolicy, retry_budgets  # noqa: E402
from sage_resilience.core import (  # noqa: E402
    FailureKind,
    PermanentError,
    Registry,
    RejectedError,
    ThrottledError,
    TransientError,
    classify,
)
from sage_resilience.integrations.sage.embeddings import (  # noqa: E402
    EMBEDDING_OPTIONS,
    EmbeddingAuthError,
    EmbeddingClient,
    EmbeddingConnectionError,
    EmbeddingDimensionError,
    EmbeddingError,
    EmbeddingRequestError,
    EmbeddingResponseError,
    EmbeddingServiceError,
    EmbeddingThrottledError,
    EmbeddingTimeoutError,
    classify_response,
    retry_after_from,
)
from sage_resilience.integrations.sage.rig.stub import EmbeddingStub  # noqa: E402

pytestmark = pytest.mark.service

DIMENSIONS = 8


@pytest.fixture(autouse=True)
def _fresh_retry_budgets() -> Iterator[None]:
    """Policies of one name share a process-wide retry budget: start each test with none."""
    retry_budgets.clear()
    yield
    retry_budgets.clear()


@pytest.fixture
def stub() -> Iterator[EmbeddingStub]:
    with EmbeddingStub(dimensions=DIMENSIONS) as server:
        yield server


@pytest.fixture
async def client(stub: EmbeddingStub) -> AsyncIterator[EmbeddingClient]:
    """The client with its default policy, expecting the stub's dimensions."""
    async with EmbeddingClient(stub.url, dimensions=DIMENSIONS) as c:
        yield c


def breaker_counts(client: EmbeddingClient) -> tuple[str, int, int]:
    """The client's breaker: (state, failures, ignored calls)."""
    breaker = client.policy.breaker
    assert breaker is not None
    stats = breaker.stats()
    return stats.state, stats.failures, stats.ignored


# -- answers and batching ------------------------------------------------------------------------


async def test_embed_returns_the_services_vector(
    stub: EmbeddingStub, client: EmbeddingClient
) -> None:
    """embed returns the vector the service computed, in one request."""
    vector = await client.embed("a memory")
    assert vector == stub.vector_for("a memory")
    assert stub.stats().requests == 1


async def test_embed_many_splits_into_batches_and_keeps_the_order(stub: EmbeddingStub) -> None:
    """130 texts with batch_size 64: requests of 64, 64 and 2 inputs, answers in input order."""
    texts = [f"text number {i}" for i in range(130)]
    async with EmbeddingClient(stub.url, batch_size=64) as client:
        vectors = await client.embed_many(texts)
    assert vectors == [stub.vector_for(t) for t in texts]
    stats = stub.stats()
    assert dict(stats.by_batch_size) == {64: 2, 2: 1}
    assert (stats.requests, stats.inputs) == (3, 130)


async def test_answers_are_put_back_in_order_by_index(
    stub: EmbeddingStub, client: EmbeddingClient
) -> None:
    """The service may list the vectors in any order: the client sorts them by ``index``."""
    stub.inject("shuffled", times=1)
    texts = ["first", "second", "third"]
    assert await client.embed_many(texts) == [stub.vector_for(t) for t in texts]
    assert stub.stats().by_fault == {"shuffled": 1}
    assert stub.stats().requests == 1  # the shuffled answer itself was used


async def test_no_texts_make_no_request(stub: EmbeddingStub, client: EmbeddingClient) -> None:
    """embed_many of nothing returns nothing and sends nothing."""
    assert await client.embed_many([]) == []
    assert stub.stats().requests == 0


async def test_bad_texts_are_refused_before_any_request(
    stub: EmbeddingStub, client: EmbeddingClient
) -> None:
    """Empty or non-string texts raise naming the position, before any request."""
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        await client.embed_many(["fine", ""])
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        await client.embed_many([3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="texts"):
        await client.embed_many("a string is not a list of texts")
    with pytest.raises(TypeError, match="text"):
        await client.embed(None)  # type: ignore[arg-type]
    assert stub.stats().requests == 0


async def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    """api_key goes out as Authorization: Bearer."""
    with EmbeddingStub(api_key="sk-right") as stub:
        async with EmbeddingClient(stub.url, api_key="sk-right") as client:
            assert await client.embed("x") == stub.vector_for("x")


# -- permanent errors: raised once, not retried, not counted by the breaker ----------------------


@pytest.mark.parametrize(
    ("kind", "error", "code", "provider_says"),
    [
        ("400", EmbeddingRequestError, None, "'$.input' is invalid"),
        ("401", EmbeddingAuthError, "invalid_api_key", "Incorrect API key provided"),
        ("403", EmbeddingAuthError, "unsupported_country_region_territory", "not supported"),
        ("404", EmbeddingRequestError, "model_not_found", "does not exist"),
    ],
)
async def test_a_4xx_is_raised_once_and_never_opens_the_breaker(
    stub: EmbeddingStub,
    client: EmbeddingClient,
    kind: str,
    error: type[EmbeddingError],
    code: str | None,
    provider_says: str,
) -> None:
    """Every call answered with the 4xx raises it at the first request (the stub counts one
    request per call), with the provider's message; 40 of them leave the breaker closed."""
    stub.inject(kind)  # every request, until cleared
    with pytest.raises(error) as caught:
        await client.embed("x")
    assert stub.stats().requests == 1
    assert caught.value.status == int(kind)
    assert caught.value.code == code
    assert isinstance(caught.value, PermanentError)
    assert str(caught.value).startswith(f"embeddings: HTTP {kind}")
    assert provider_says in str(caught.value)
    for _ in range(39):
        with pytest.raises(error):
            await client.embed("x")
    assert stub.stats().requests == 40
    state, failures, ignored = breaker_counts(client)
    assert (state, failures) == ("closed", 0)
    assert ignored == 40
    stub.clear()
    assert await client.embed("x") == stub.vector_for("x")


async def test_a_wrong_api_key_is_raised_once_with_the_providers_message() -> None:
    """A 401 for a wrong key is raised at the first request, with the provider's words."""
    with EmbeddingStub(api_key="sk-right") as stub:
        async with EmbeddingClient(stub.url, api_key="sk-wrong") as client:
            with pytest.raises(EmbeddingAuthError, match="Incorrect API key provided"):
                await client.embed("x")
            assert stub.stats().by_status == {401: 1}
            assert breaker_counts(client)[:2] == ("closed", 0)


async def test_server_errors_count_against_the_breaker_where_4xx_do_not(
    stub: EmbeddingStub, client: EmbeddingClient
) -> None:
    """The contrast to the test above: 500s are failures of the dependency."""
    stub.inject("500")
    with pytest.raises(EmbeddingServiceError):
        await client.embed("x")
    assert stub.stats().requests == 3  # retried: three attempts
    _, failures, ignored = breaker_counts(client)
    assert (failures, ignored) == (3, 0)


# -- transient errors: retried ---------------------------------------------------------------


@pytest.mark.parametrize(("kind", "retry_after"), [("429", 0.3), ("503", 0.2), ("504", 0.2)])
async def test_a_throttle_is_retried_after_its_retry_after(
    stub: EmbeddingStub, client: EmbeddingClient, kind: str, retry_after: float
) -> None:
    """One throttled answer, then the vector: the retry waited at least the Retry-After."""
    stub.inject(kind, times=1, retry_after=retry_after)
    start = time.monotonic()
    vector = await client.embed("x")
    elapsed = time.monotonic() - start
    assert vector == stub.vector_for("x")
    assert dict(stub.stats().by_status) == {int(kind): 1, 200: 1}
    assert retry_after <= elapsed < retry_after + 1.0
    # A throttle is not a failure of the dependency.
    assert breaker_counts(client)[1] == 0


@pytest.mark.parametrize("kind", ["500", "502", "503", "504", "malformed", "disconnect"])
async def test_a_transient_failure_is_retried_to_success(
    stub: EmbeddingStub, client: EmbeddingClient, kind: str
) -> None:
    """One transient failure, then the vector: two requests in all."""
    stub.inject(kind, times=1)
    assert await client.embed("x") == stub.vector_for("x")
    assert stub.stats().requests == 2


async def test_a_lasting_outage_fails_after_the_attempts_without_a_vector(
    stub: EmbeddingStub, client: EmbeddingClient
) -> None:
    """A lasting 503 raises after max_attempts requests, with no vector."""
    stub.inject("503")
    with pytest.raises(EmbeddingServiceError, match="HTTP 503") as caught:
        await client.embed("x")
    assert isinstance(caught.value, TransientError)
    assert caught.value.retry_after is None
    assert stub.stats().requests == EMBEDDING_OPTIONS.max_attempts


async def test_a_malformed_answer_is_an_error_not_a_vector(
    stub: EmbeddingStub, client: EmbeddingClient
) -> None:
    """Malformed answers raise EmbeddingResponseError after the attempts."""
    stub.inject("malformed")
    with pytest.raises(EmbeddingResponseError, match="not JSON"):
        await client.embed("x")
    assert stub.stats().requests == EMBEDDING_OPTIONS.max_attempts


async def test_a_slow_answer_times_out_and_is_retried(stub: EmbeddingStub) -> None:
    """An answer slower than request_timeout is cut and retried."""
    stub.inject("slow", times=1, delay=2.0)
    async with EmbeddingClient(stub.url, request_timeout=0.2) as client:
        start = time.monotonic()
        assert await client.embed("x") == stub.vector_for("x")
        assert time.monotonic() - start < 1.5
    assert stub.stats().requests == 2


async def test_no_service_is_a_connection_error() -> None:
    """Nobody listening: EmbeddingConnectionError."""
    stub = EmbeddingStub().start()
    url = stub.url
    stub.stop()
    async with EmbeddingClient(url) as client:
        with pytest.raises(EmbeddingConnectionError, match="no answer"):
            await client.embed("x")


# -- wrong dimensions: never a vector ------------------------------------------------------------


async def test_wrong_dimensions_raise_once_and_return_no_vector(
    stub: EmbeddingStub, client: EmbeddingClient
) -> None:
    """Vectors of the wrong length raise at once (one request), never returned."""
    stub.inject("wrong_dimensions")
    with pytest.raises(EmbeddingDimensionError, match="7 dimensions, expected 8") as caught:
        await client.embed("x")
    assert (caught.value.expected, caught.value.received) == (8, 7)
    assert stub.stats().requests == 1  # permanent: the same request would get the same answer
    texts = [f"t{i}" for i in range(10)]
    with pytest.raises(EmbeddingDimensionError):
        await client.embed_many(texts)  # no partial list either
    assert breaker_counts(client)[1] == 0


def item(index: Any, vector: Any) -> dict[str, Any]:
    return {"object": "embedding", "index": index, "embedding": vector}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (None, "no 'data' list"),
        ([item(0, [1.0, 0.0])], "1 vectors for 2 inputs"),
        ([item(0, [1.0, 0.0]), item(0, [0.0, 1.0])], "index 0 answered twice"),
        ([item(0, [1.0, 0.0]), item(2, [0.0, 1.0])], "without a valid index"),
        ([item(0, [1.0, 0.0]), item(True, [0.0, 1.0])], "without a valid index"),
        ([item(0, [1.0, 0.0]), item(1, ["a", "b"])], "at index 1 is not numbers"),
        ([item(0, [1.0, 0.0]), item(1, [])], "at index 1 is not numbers"),
        ([item(0, [1.0, 0.0]), item(1, [float("inf"), 0.0])], "at index 1 is not numbers"),
        ([item(0, [1.0, 0.0]), "not an item"], "without a valid index"),
    ],
)
async def test_an_invalid_answer_is_an_error_never_a_vector(data: Any, why: str) -> None:
    """Answers no well-behaved server sends (fed in by a mock transport): each is an
    EmbeddingResponseError saying what was wrong, after the policy's attempts."""
    requests = 0

    def answer(request: Any) -> Any:
        nonlocal requests
        requests += 1
        # json.dumps writes Infinity (as some servers do); httpx's json= would refuse it.
        return httpx.Response(200, content=json.dumps({"data": data}).encode())

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        client = EmbeddingClient("http://embeddings.test", http_client=http)
        with pytest.raises(EmbeddingResponseError, match=why):
            await client.embed_many(["a", "b"])
    assert requests == EMBEDDING_OPTIONS.max_attempts


async def test_without_dimensions_the_first_answer_sets_the_length(stub: EmbeddingStub) -> None:
    """dimensions=None adopts the first answer's length, then holds answers to it."""
    async with EmbeddingClient(stub.url) as client:
        assert client.dimensions is None
        assert len(await client.embed("x")) == DIMENSIONS
        assert client.dimensions == DIMENSIONS
        stub.inject("wrong_dimensions", times=1)
        with pytest.raises(EmbeddingDimensionError):
            await client.embed("y")


# -- convergence under the provider's limit ------------------------------------------------------


async def test_under_an_rpm_limit_the_client_converges_below_it() -> None:
    """20 callers offering far more than a limit of 50 per 1 s window for 3 s: in the second
    half under 2 % of the requests the service sees are 429s, and it serves near its limit;
    the excess is refused locally (RejectedError), never answered with a made-up vector."""
    limit, duration, callers = 50, 3.0, 20
    with EmbeddingStub(rpm=limit, window=1.0, dimensions=DIMENSIONS) as stub:
        async with EmbeddingClient(stub.url, dimensions=DIMENSIONS) as client:
            outcomes: Counter[str] = Counter()
            end = time.monotonic() + duration

            async def caller(i: int) -> None:
                n = 0
                while time.monotonic() < end:
                    n += 1
                    text = f"caller {i} text {n}"
                    try:
                        vector = await client.embed(text)
                    except RejectedError:
                        outcomes["rejected locally"] += 1
                        await asyncio.sleep(0.01)  # real-time: a caller that backs off a little
                    except EmbeddingThrottledError:
                        outcomes["throttled"] += 1
                    else:
                        assert vector == stub.vector_for(text)
                        outcomes["ok"] += 1

            async def halfway() -> Any:
                await asyncio.sleep(duration / 2)  # real-time: the load runs in real time
                return stub.stats()

            middle, *_ = await asyncio.gather(halfway(), *(caller(i) for i in range(callers)))
            final = stub.stats()
    served = final.ok - middle.ok
    throttled = final.rate_limited - middle.rate_limited
    share = throttled / (served + throttled)
    throughput = served / (duration / 2)
    print(f"second half: {served} served ({throughput:.1f}/s), {throttled} 429s ({share:.2%})")
    assert share < 0.02
    assert throughput >= 0.8 * limit
    assert outcomes["ok"] == final.ok  # every answer served went to a caller
    assert outcomes["rejected locally"] > 0  # the excess was shed by the client
    assert final.requests == final.ok + final.rate_limited


# -- the policy and its registry -----------------------------------------------------------------


async def test_the_default_policy_is_registered_and_shared_by_name(stub: EmbeddingStub) -> None:
    """Default policies are registered; clients of one name in a registry share one."""
    registry = Registry("sage")
    one = EmbeddingClient(stub.url, registry=registry, name="openai")
    two = EmbeddingClient(stub.url, registry=registry, name="openai")
    other = EmbeddingClient(stub.url, registry=registry, name="local")
    try:
        assert one.policy is two.policy
        assert one.policy is not other.policy
        assert one.policy.options == EMBEDDING_OPTIONS
        assert set(registry.names()) == {
            "openai.breaker",
            "openai.limiter",
            "local.breaker",
            "local.limiter",
        }
        await one.embed("x")
        await two.embed("y")
        assert stub.stats().ok == 2
    finally:
        for c in (one, two, other):
            await c.aclose()


async def test_a_given_policy_is_used_and_registered(stub: EmbeddingStub) -> None:
    """A given policy is used as it is, and registered when a registry is given."""
    policy = AdaptivePolicy("mine")
    registry = Registry("sage")
    async with EmbeddingClient(stub.url, policy=policy, registry=registry) as client:
        assert client.policy is policy
        assert "mine.breaker" in registry.names()
        await client.embed("x")


async def test_a_given_http_client_is_not_closed(stub: EmbeddingStub) -> None:
    """aclose leaves a given httpx client open."""
    async with httpx.AsyncClient() as http:
        async with EmbeddingClient(stub.url, http_client=http) as client:
            await client.embed("x")
        assert not http.is_closed
        assert (
            await http.post(stub.endpoint, json={"model": "m", "input": "y"})
        ).status_code == 200


# -- classification and parsing ------------------------------------------------------------------


def response(status: int, body: Any = None, **headers: str) -> Any:
    return httpx.Response(
        status,
        json={"error": {"message": "boom", "type": "t", "code": "c"}} if body is None else body,
        headers=headers,
        request=httpx.Request("POST", "http://x/v1/embeddings"),
    )


@pytest.mark.parametrize(
    ("status", "headers", "error", "kind"),
    [
        (429, {}, EmbeddingThrottledError, FailureKind.THROTTLED),
        (503, {"Retry-After": "1"}, EmbeddingThrottledError, FailureKind.THROTTLED),
        (504, {"Retry-After": "1"}, EmbeddingThrottledError, FailureKind.THROTTLED),
        (503, {}, EmbeddingServiceError, FailureKind.TRANSIENT),
        (500, {"Retry-After": "1"}, EmbeddingServiceError, FailureKind.TRANSIENT),
        (502, {}, EmbeddingServiceError, FailureKind.TRANSIENT),
        (408, {}, EmbeddingServiceError, FailureKind.TRANSIENT),
        (409, {}, EmbeddingServiceError, FailureKind.TRANSIENT),
        (400, {}, EmbeddingRequestError, FailureKind.PERMANENT),
        (401, {}, EmbeddingAuthError, FailureKind.PERMANENT),
        (403, {}, EmbeddingAuthError, FailureKind.PERMANENT),
        (404, {}, EmbeddingRequestError, FailureKind.PERMANENT),
        (422, {}, EmbeddingRequestError, FailureKind.PERMANENT),
        (301, {}, EmbeddingRequestError, FailureKind.PERMANENT),
    ],
)
def test_answers_are_classified_by_status(
    status: int, headers: dict[str, str], error: type[Exception], kind: FailureKind
) -> None:
    """Each status maps to its error class and failure kind, with the provider's words."""
    exc = classify_response(response(status, **headers), name="emb")
    assert type(exc) is error
    assert classify(exc) is kind
    assert str(exc) == f"emb: HTTP {status} (c): boom"
    assert (exc.status, exc.code, exc.error_type) == (status, "c", "t")
    assert isinstance(exc, ThrottledError) == (kind is FailureKind.THROTTLED)


def test_a_non_json_error_body_is_quoted() -> None:
    """A non-JSON error body is quoted in the message."""
    exc = classify_response(response(502, body="<html>bad gateway</html>"))
    assert "bad gateway" in str(exc)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": "0.25"}, 0.25),
        ({"Retry-After": "2", "retry-after-ms": "150"}, 0.15),
        ({"Retry-After": "-1"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        (
            {
                "Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT",
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
            },
            30.0,
        ),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, None),  # no Date to measure from
    ],
)
def test_retry_after_is_read_in_seconds(headers: dict[str, str], expected: float | None) -> None:
    """retry-after-ms first, then Retry-After as seconds or as a date against Date."""
    assert retry_after_from(httpx.Headers(headers)) == expected


def test_errors_survive_pickling() -> None:
    """The errors pickle with their attributes."""
    exc = EmbeddingThrottledError("x", status=429, code="c", retry_after=0.5)
    copy = pickle.loads(pickle.dumps(exc))
    assert (type(copy), str(copy), copy.retry_after, copy.status) == (type(exc), "x", 0.5, 429)
    timeout = pickle.loads(pickle.dumps(EmbeddingTimeoutError("slow")))
    assert isinstance(timeout, TimeoutError)
    assert str(timeout) == "slow"
    dims = pickle.loads(pickle.dumps(EmbeddingDimensionError("d", expected=8, received=7)))
    assert (dims.expected, dims.received) == (8, 7)


# -- argument checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "error"),
    [
        ({"base_url": "127.0.0.1:80"}, "base_url", ValueError),
        ({"model": ""}, "model", ValueError),
        ({"api_key": ""}, "api_key", ValueError),
        ({"dimensions": 0}, "dimensions", ValueError),
        ({"dimensions": "8"}, "dimensions", TypeError),
        ({"batch_size": 0}, "batch_size", ValueError),
        ({"batch_size": 5000}, "batch_size", ValueError),
        ({"batch_size": 2.0}, "batch_size", TypeError),
        ({"request_timeout": 0}, "request_timeout", ValueError),
        ({"name": ""}, "name", ValueError),
        ({"policy": object()}, "policy", TypeError),
        ({"registry": {}}, "registry", TypeError),
        ({"http_client": object()}, "http_client", TypeError),
        ({"path": "v1/embeddings"}, "path", ValueError),
    ],
)
def test_bad_arguments_name_the_parameter(
    kwargs: dict[str, Any], field: str, error: type[Exception]
) -> None:
    """A bad argument raises ValueError or TypeError naming it."""
    arguments: dict[str, Any] = {"base_url": "http://127.0.0.1:1", **kwargs}
    with pytest.raises(error, match=field):
        EmbeddingClient(**arguments)
