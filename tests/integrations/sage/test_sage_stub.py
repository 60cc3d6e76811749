"""The embedding stub: a real HTTP server on 127.0.0.1 speaking OpenAI's /v1/embeddings, with
deterministic vectors, a requests-per-minute limit, scheduled faults and counts."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

httpx = pytest.importorskip("httpx", reason="the Sage wrappers need the 'sage' extra")

from sage_resilience.integrations.sage.rig.stub import (  # noqa: E402
    EMBEDDINGS_PATH,
    FAULT_KINDS,
    MAX_INPUTS,
    EmbeddingStub,
)

pytestmark = pytest.mark.service


@pytest.fixture
def stub() -> Iterator[EmbeddingStub]:
    """A stub with no limit and no key, on an ephemeral port."""
    with EmbeddingStub(dimensions=8) as server:
        yield server


@pytest.fixture
def http(stub: EmbeddingStub) -> Iterator[Any]:
    """A sync httpx client pointed at ``stub``."""
    with httpx.Client(base_url=stub.url, timeout=5.0) as client:
        yield client


def post(client: Any, payload: Any = None, **kwargs: Any) -> Any:
    body = {"model": "m", "input": ["hello"]} if payload is None else payload
    return client.post(EMBEDDINGS_PATH, json=body, **kwargs)


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- answers -------------------------------------------------------------------------------------


def test_answers_the_openai_schema_with_deterministic_unit_vectors(
    stub: EmbeddingStub, http: Any
) -> None:
    """Each input gets the vector vector_for gives, unit length, in order, with usage counted."""
    texts = ["the cat sat", "on the mat", "the cat sat"]
    response = post(http, {"model": "my-model", "input": texts, "encoding_format": "float"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == "my-model"
    assert body["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" for item in body["data"])
    vectors = [item["embedding"] for item in body["data"]]
    assert vectors == [stub.vector_for(t) for t in texts]
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]
    for vector in vectors:
        assert len(vector) == 8
        assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0)


def test_vectors_depend_only_on_the_text() -> None:
    """Two stubs (other processes alike) give a text the same vector: it is seeded by SHA-256."""
    one, other = EmbeddingStub(dimensions=32), EmbeddingStub(dimensions=32)
    assert one.vector_for("memory") == other.vector_for("memory")
    assert one.vector_for("memory") != one.vector_for("memory ")
    assert len(one.vector_for("memory", 5)) == 5


def test_a_single_string_input_gets_one_vector(stub: EmbeddingStub, http: Any) -> None:
    """A bare string input is one input."""
    response = post(http, {"model": "m", "input": "just one"})
    assert response.status_code == 200
    assert [item["embedding"] for item in response.json()["data"]] == [stub.vector_for("just one")]


# -- counts -------------------------------------------------------------------------------------


def test_counts_requests_statuses_inputs_and_batch_sizes(stub: EmbeddingStub, http: Any) -> None:
    """Every request is counted, by status and by batch size; reset_counts starts again."""
    post(http, {"model": "m", "input": ["a", "b", "c"]})
    post(http, {"model": "m", "input": ["a", "b", "c"]})
    post(http, {"model": "m", "input": "d"})
    post(http, {"model": "m", "input": []})  # a 400
    stats = stub.stats()
    assert stats.requests == 4
    assert dict(stats.by_status) == {200: 3, 400: 1}
    assert stats.ok == 3
    assert stats.inputs == 7
    assert dict(stats.by_batch_size) == {3: 2, 1: 1}
    stub.reset_counts()
    assert stub.stats().requests == 0
    assert stub.stats().status(200) == 0
    post(http)
    assert stub.stats().requests == 1


def test_counts_are_exact_under_concurrent_requests(stub: EmbeddingStub) -> None:
    """8 threads x 25 requests on their own connections: every one is counted once."""
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            with httpx.Client(base_url=stub.url, timeout=5.0) as client:
                for _ in range(25):
                    assert post(client, {"model": "m", "input": ["x", "y"]}).status_code == 200
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    assert not failures
    stats = stub.stats()
    assert stats.requests == 200
    assert stats.ok == 200
    assert stats.inputs == 400


# -- the requests-per-minute limit -----------------------------------------------------------


def test_over_the_limit_answers_429_with_retry_after_and_the_provider_body() -> None:
    """rpm 20 per 1 s: a burst of 20 passes, the next gets OpenAI's 429 with the time until a
    slot frees; after that long one more passes."""
    with EmbeddingStub(rpm=20, window=1.0) as stub, httpx.Client(base_url=stub.url) as http:
        statuses = [post(http).status_code for _ in range(20)]
        assert statuses == [200] * 20
        refused = post(http)
        assert refused.status_code == 429
        error = error_of(refused)
        assert error["code"] == "rate_limit_exceeded"
        assert error["type"] == "requests"
        assert error["message"].startswith("Rate limit reached for requests")
        retry_after = float(refused.headers["Retry-After"])
        assert 0.0 < retry_after <= 1.0 / 20 + 1e-3  # one slot refills in 1/20 s
        assert int(refused.headers["retry-after-ms"]) == pytest.approx(retry_after * 1000, abs=1)
        assert refused.headers["x-ratelimit-limit-requests"] == "20"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        reset = float(refused.headers["x-ratelimit-reset-requests"].rstrip("s"))
        assert retry_after < reset <= 1.0
        time.sleep(retry_after)  # real-time: the stub's limit refills in real time
        assert post(http).status_code == 200
        stats = stub.stats()
        assert stats.rate_limited == 1
        assert dict(stats.by_status) == {200: 21, 429: 1}


def test_the_limit_serves_at_most_burst_plus_rate_over_a_span() -> None:
    """Hammered for 0.5 s at rpm 40 per 1 s (burst 40): at most 40 + 0.5 * 40 are served, the
    rest refused, and refused requests take no slot (the served count keeps growing)."""
    with EmbeddingStub(rpm=40, window=1.0) as stub, httpx.Client(base_url=stub.url) as http:
        assert stub.burst == 40
        start = time.monotonic()
        while time.monotonic() - start < 0.5:
            post(http)
        elapsed = time.monotonic() - start
        stats = stub.stats()
    assert stats.rate_limited > 0
    assert stats.ok <= 40 + math.ceil(elapsed * 40) + 1
    assert stats.ok >= 40 + math.floor(0.5 * 40) - 5  # the bucket refilled meanwhile
    assert stats.status(429) == stats.rate_limited
    assert stats.requests == stats.ok + stats.rate_limited


def test_the_limit_can_be_changed_and_lifted_while_running(stub: EmbeddingStub) -> None:
    """``set_limit`` imposes a limit on a running stub (its bucket starts full), and ``None``
    lifts it; bad values are refused by name."""
    with httpx.Client(base_url=stub.url) as http:
        assert [post(http).status_code for _ in range(5)] == [200] * 5
        stub.set_limit(3, burst=3)
        assert [post(http).status_code for _ in range(4)] == [200, 200, 200, 429]
        stub.set_limit(None)
        assert [post(http).status_code for _ in range(5)] == [200] * 5
    assert (stub.rpm, stub.burst) == (None, None)
    with pytest.raises(ValueError, match="rpm"):
        stub.set_limit(0)
    with pytest.raises(ValueError, match="burst"):
        stub.set_limit(None, burst=2)


def test_a_client_hanging_up_prints_no_traceback(
    stub: EmbeddingStub, capsys: pytest.CaptureFixture[str]
) -> None:
    """A client that resets its connection mid-request is routine for a fault rig: the server
    does not print socketserver's traceback for it."""
    import socket
    import struct

    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", stub.port))
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST with the request half sent
    with httpx.Client(base_url=stub.url) as http:
        assert post(http).status_code == 200  # the server still answers
    stub.stop()
    assert "Traceback" not in capsys.readouterr().err


def test_admitted_answers_carry_the_remaining_requests() -> None:
    """120 per minute allows a burst of 2; admitted answers say how many are left."""
    with EmbeddingStub(rpm=120, window=60.0) as stub, httpx.Client(base_url=stub.url) as http:
        assert stub.burst == 2  # one second's worth of 120 per minute
        first = post(http)
        assert first.headers["x-ratelimit-limit-requests"] == "120"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert post(http).status_code == 200
        assert post(http).status_code == 429


# -- scheduled faults ----------------------------------------------------------------------------


def test_faults_are_served_in_the_order_they_were_queued(stub: EmbeddingStub, http: Any) -> None:
    """Two 503s, then a 400, then normal answers; each fault counts what it served."""
    first = stub.inject(503, times=2)
    second = stub.inject("400", times=1)
    assert stub.faults == (first, second)
    statuses = [post(http).status_code for _ in range(4)]
    assert statuses == [503, 503, 400, 200]
    assert (first.served, second.served) == (2, 1)
    assert stub.faults == ()
    assert dict(stub.stats().by_fault) == {"503": 2, "400": 1}


def test_a_fault_for_some_seconds_ends_by_itself(stub: EmbeddingStub, http: Any) -> None:
    """A fault given seconds applies to every request until its time is up."""
    fault = stub.inject("500", seconds=0.2)
    assert post(http).status_code == 500
    assert post(http).status_code == 500
    assert fault.until is not None
    time.sleep(max(0.0, fault.until - time.monotonic()))  # real-time: the fault's own 0.2 s
    assert post(http).status_code == 200
    assert fault.served == 2


def test_a_fault_without_limits_lasts_until_cleared(stub: EmbeddingStub, http: Any) -> None:
    """A fault given neither times nor seconds lasts until clear()."""
    stub.inject("502")
    assert [post(http).status_code for _ in range(5)] == [502] * 5
    stub.clear()
    assert post(http).status_code == 200


@pytest.mark.parametrize(
    ("kind", "error_type", "code"),
    [
        ("400", "invalid_request_error", None),
        ("401", "invalid_request_error", "invalid_api_key"),
        ("403", "request_forbidden", "unsupported_country_region_territory"),
        ("404", "invalid_request_error", "model_not_found"),
        ("429", "requests", "rate_limit_exceeded"),
        ("500", "server_error", None),
        ("502", "server_error", None),
        ("503", "server_error", "engine_overloaded"),
        ("504", "server_error", None),
    ],
)
def test_error_faults_answer_the_providers_status_and_body(
    stub: EmbeddingStub, http: Any, kind: str, error_type: str, code: str | None
) -> None:
    """Each error fault answers its status with OpenAI's error body."""
    stub.inject(kind, times=1)
    response = post(http)
    assert response.status_code == int(kind)
    error = error_of(response)
    assert error["type"] == error_type
    assert error["code"] == code
    assert error["message"]
    # Only the 429 sends a Retry-After unless one is asked for (1 s by default).
    assert response.headers.get("Retry-After") == ("1" if kind == "429" else None)
    assert stub.stats().by_status == {int(kind): 1}


def test_503_and_504_send_a_retry_after_when_given_one(stub: EmbeddingStub, http: Any) -> None:
    """retry_after sets the Retry-After (and retry-after-ms) of 429, 503 and 504."""
    stub.inject(503, times=1, retry_after=0.25)
    stub.inject(504, times=1, retry_after=2)
    stub.inject(429, times=1, retry_after=0.125)
    first, second, third = post(http), post(http), post(http)
    assert (first.status_code, first.headers["Retry-After"]) == (503, "0.25")
    assert first.headers["retry-after-ms"] == "250"
    assert (second.status_code, second.headers["Retry-After"]) == (504, "2")
    assert (third.status_code, third.headers["Retry-After"]) == (429, "0.125")


def test_error_faults_take_no_slot_of_the_limit() -> None:
    """Faulted requests do not use up the limit: 2 answers still pass after 3 500s."""
    with EmbeddingStub(rpm=2, window=60.0, burst=2, dimensions=4) as stub:
        stub.inject(500, times=3)
        with httpx.Client(base_url=stub.url) as http:
            assert [post(http).status_code for _ in range(6)] == [500, 500, 500, 200, 200, 429]


def test_a_slow_answer_is_right_but_late(stub: EmbeddingStub, http: Any) -> None:
    """A slow fault delays the right answer by its delay; the next request is quick."""
    stub.inject("slow", times=1, delay=0.2)
    start = time.monotonic()
    response = post(http, {"model": "m", "input": ["late"]})
    assert time.monotonic() - start >= 0.2
    assert response.status_code == 200
    assert response.json()["data"][0]["embedding"] == stub.vector_for("late")
    start = time.monotonic()
    post(http)
    assert time.monotonic() - start < 0.2


def test_latency_delays_every_answer() -> None:
    """latency delays every answer."""
    with EmbeddingStub(latency=0.1) as stub, httpx.Client(base_url=stub.url) as http:
        start = time.monotonic()
        assert post(http).status_code == 200
        assert time.monotonic() - start >= 0.1


def test_wrong_dimensions_answers_vectors_of_another_length(stub: EmbeddingStub, http: Any) -> None:
    """wrong_dimensions answers vectors one element short, once."""
    stub.inject("wrong_dimensions", times=1)
    data = post(http, {"model": "m", "input": ["a", "b"]}).json()["data"]
    assert [len(item["embedding"]) for item in data] == [7, 7]
    assert [len(i["embedding"]) for i in post(http).json()["data"]] == [8]


def test_malformed_answers_a_200_that_is_not_json(stub: EmbeddingStub, http: Any) -> None:
    """malformed answers a 200 whose body does not parse."""
    stub.inject("malformed", times=1)
    response = post(http)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)


def test_shuffled_lists_the_vectors_in_reverse_with_their_indices(
    stub: EmbeddingStub, http: Any
) -> None:
    """shuffled lists the right vectors last to first, each with its index."""
    stub.inject("shuffled", times=1)
    data = post(http, {"model": "m", "input": ["a", "b", "c"]}).json()["data"]
    assert [item["index"] for item in data] == [2, 1, 0]
    assert [item["embedding"] for item in data] == [stub.vector_for(t) for t in "cba"]


def test_disconnect_closes_the_connection_without_an_answer(stub: EmbeddingStub, http: Any) -> None:
    """disconnect closes the connection unanswered; it is counted, with no status."""
    stub.inject("disconnect", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        post(http)
    assert post(http).status_code == 200
    stats = stub.stats()
    assert (stats.requests, stats.disconnected, dict(stats.by_status)) == (2, 1, {200: 1})


# -- authentication and invalid requests ---------------------------------------------------------


def test_an_api_key_is_required_when_set() -> None:
    """With api_key set, a missing or wrong bearer token gets a 401."""
    with EmbeddingStub(api_key="sk-test") as stub, httpx.Client(base_url=stub.url) as http:
        missing = post(http)
        wrong = post(http, headers={"Authorization": "Bearer sk-other"})
        right = post(http, headers={"Authorization": "Bearer sk-test"})
        assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
        assert "didn't provide an API key" in error_of(missing)["message"]
        assert error_of(wrong)["code"] == "invalid_api_key"
        assert stub.stats().requests == 3


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (json.dumps({"input": ["a"]}).encode(), "model"),
        (json.dumps({"model": "m"}).encode(), "input"),
        (json.dumps({"model": "m", "input": []}).encode(), "input"),
        (json.dumps({"model": "m", "input": [""]}).encode(), "input"),
        (json.dumps({"model": "m", "input": ["a", 3]}).encode(), "input"),
        (json.dumps({"model": "m", "input": ["a"] * (MAX_INPUTS + 1)}).encode(), "input"),
        (
            json.dumps({"model": "m", "input": "a", "encoding_format": "base64"}).encode(),
            "encoding_format",
        ),
    ],
)
def test_invalid_requests_get_a_400_naming_the_parameter(
    stub: EmbeddingStub, http: Any, content: bytes, param: str | None
) -> None:
    """Invalid bodies get an invalid_request_error naming the parameter."""
    response = http.post(EMBEDDINGS_PATH, content=content)
    assert response.status_code == 400
    error = error_of(response)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert stub.stats().inputs == 0


def test_other_paths_and_methods_are_refused(stub: EmbeddingStub, http: Any) -> None:
    """Other paths get a 404, other methods a 405."""
    assert http.post("/v1/completions", json={}).status_code == 404
    refused = http.get(EMBEDDINGS_PATH)
    assert refused.status_code == 405
    assert refused.headers["Allow"] == "POST"
    assert dict(stub.stats().by_status) == {404: 1, 405: 1}


# -- lifecycle -----------------------------------------------------------------------------------


def test_start_stop_and_restart_on_the_same_port() -> None:
    """Ephemeral ports differ; a stopped stub refuses connections; it restarts on its port."""
    stub = EmbeddingStub()
    with pytest.raises(RuntimeError, match="not running"):
        _ = stub.url
    with stub, EmbeddingStub() as other:
        assert stub.running
        assert stub.port != other.port
        assert stub.url == f"http://127.0.0.1:{stub.port}"
        assert stub.endpoint == stub.url + "/v1/embeddings"
        with pytest.raises(RuntimeError, match="already running"):
            stub.start()
        port = stub.port
    assert not stub.running
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{port}{EMBEDDINGS_PATH}", json={"model": "m", "input": "a"})
    stub.stop()  # idempotent
    with stub:
        assert stub.port == port
        assert httpx.post(stub.endpoint, json={"model": "m", "input": "a"}).status_code == 200


def test_stop_ends_a_slow_answer_and_keep_alive_connections_at_once() -> None:
    """stop() does not wait out a 30 s slow answer nor an idle keep-alive connection."""
    stub = EmbeddingStub().start()
    idle = httpx.Client(base_url=stub.url)
    assert post(idle).status_code == 200  # leaves a kept-alive connection (and its thread)
    stub.inject("slow", delay=30.0)
    outcome: list[object] = []

    def slow_call() -> None:
        try:
            outcome.append(httpx.post(stub.endpoint, json={"model": "m", "input": "a"}))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=slow_call)
    caller.start()
    deadline = time.monotonic() + 5.0
    while stub.stats().requests < 2 and time.monotonic() < deadline:
        time.sleep(0.005)  # real-time: waiting for the server thread to take the request
    start = time.monotonic()
    stub.stop()
    assert time.monotonic() - start < 2.0
    caller.join(5.0)
    idle.close()
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.RemoteProtocolError)
    assert stub.stats().disconnected == 1


# -- argument checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "error"),
    [
        ({"dimensions": 0}, "dimensions", ValueError),
        ({"dimensions": 1.5}, "dimensions", TypeError),
        ({"rpm": 0}, "rpm", ValueError),
        ({"rpm": "50"}, "rpm", TypeError),
        ({"window": 0.0}, "window", ValueError),
        ({"window": math.inf}, "window", ValueError),
        ({"rpm": 10, "burst": 0}, "burst", ValueError),
        ({"burst": 5}, "burst", ValueError),
        ({"api_key": ""}, "api_key", ValueError),
        ({"latency": -1.0}, "latency", ValueError),
        ({"host": ""}, "host", ValueError),
        ({"port": -1}, "port", ValueError),
        ({"port": 70000}, "port", ValueError),
    ],
)
def test_bad_constructor_arguments_name_the_parameter(
    kwargs: dict[str, Any], field: str, error: type[Exception]
) -> None:
    """A bad argument raises ValueError or TypeError naming it."""
    with pytest.raises(error, match=field):
        EmbeddingStub(**kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "field", "error"),
    [
        (("418",), {}, "kind", ValueError),
        ((200,), {}, "kind", ValueError),
        (("slow",), {"times": 0}, "times", ValueError),
        (("slow",), {"seconds": 0.0}, "seconds", ValueError),
        (("slow",), {"delay": -0.1}, "delay", ValueError),
        (("429",), {"retry_after": -1.0}, "retry_after", ValueError),
        (("500",), {"retry_after": 1.0}, "retry_after", ValueError),
    ],
)
def test_bad_inject_arguments_name_the_parameter(
    args: tuple[Any, ...], kwargs: dict[str, Any], field: str, error: type[Exception]
) -> None:
    """A bad inject argument raises naming it, and queues nothing."""
    stub = EmbeddingStub()
    with pytest.raises(error, match=field):
        stub.inject(*args, **kwargs)
    assert stub.faults == ()


def test_every_fault_kind_can_be_injected() -> None:
    """Every kind in FAULT_KINDS is accepted and queued in order."""
    stub = EmbeddingStub()
    for kind in FAULT_KINDS:
        stub.inject(kind, times=1)  # type: ignore[arg-type]
    assert tuple(f.kind for f in stub.faults) == FAULT_KINDS
