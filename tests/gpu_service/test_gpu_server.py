"""The HTTP server through FastAPI's TestClient (lifespan included), on the tiny model (noise)."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from gpu_service.batching import MicroBatcher
from gpu_service.engine import Engine
from gpu_service.server import ServiceState, create_app
from gpu_service.settings import Settings
from tests.gpu_service.conftest import wait_for, wait_until


class GatedPipeline:
    """The tiny pipeline, but each call waits for ``gate``: a batch stays in flight until the
    test opens it. Records the size of each batch it is called with."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.in_flight = threading.Event()
        self.batch_sizes: list[int] = []

    def __call__(self, **arguments: Any) -> Any:
        self.batch_sizes.append(len(arguments["prompt"]))
        self.in_flight.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("gate never opened")
        return self.inner(**arguments)


class Gated(NamedTuple):
    engine: Engine
    pipeline: GatedPipeline


@pytest.fixture
def gated(engine: Engine) -> Iterator[Gated]:
    """An engine of its own (its own thread) whose pipeline calls wait for ``pipeline.gate``."""
    pipeline = GatedPipeline(engine.pipeline)
    gated_engine = Engine(pipeline, model_id=engine.model_id, device="cpu", dtype=engine.dtype)
    yield Gated(gated_engine, pipeline)
    pipeline.gate.set()
    gated_engine.close()


def _service(app: FastAPI) -> ServiceState:
    state = app.state.service
    assert isinstance(state, ServiceState)
    return state


def _batcher(client: TestClient) -> MicroBatcher:
    batcher = _service(client.app).batcher  # type: ignore[arg-type]
    assert batcher is not None
    return batcher


def _wait_until_ready(client: TestClient) -> None:
    wait_until(lambda: client.get("/readyz").status_code == 200, what="/readyz answers 200")


@pytest.fixture
def client_for(engine: Engine) -> Iterator[Callable[..., TestClient]]:
    """``client_for(settings, loader=None)``: a started TestClient; closed after the test."""
    clients: list[TestClient] = []

    def start(settings: Settings, loader: Callable[[Settings], Engine] | None = None) -> TestClient:
        client = TestClient(create_app(settings, loader or (lambda _settings: engine)))
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def ready_client(
    client_for: Callable[..., TestClient], make_settings: Callable[..., Settings]
) -> TestClient:
    client = client_for(make_settings())
    _wait_until_ready(client)
    return client


def test_generate_returns_a_png_of_the_requested_size(ready_client: TestClient) -> None:
    response = ready_client.post(
        "/generate", json={"prompt": "a red fox", "width": 96, "height": 64, "seed": 5}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "5"
    assert Image.open(io.BytesIO(response.content)).size == (96, 64)


def test_same_seed_over_http_gives_the_same_bytes(ready_client: TestClient) -> None:
    body = {"prompt": "a red fox", "seed": 11, "steps": 2}
    assert (
        ready_client.post("/generate", json=body).content
        == ready_client.post("/generate", json=body).content
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "width": 100, "height": 64}, "width"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "steps": 60}, "steps"),  # above MAX_STEPS (50), under the schema's 150
        ({"prompt": "x", "width": 2048, "height": 2048}, "width"),  # above MAX_PIXELS
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "guidance": "lots"}, "guidance"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({}, "prompt"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    ready_client: TestClient, body: dict[str, object], field: str
) -> None:
    response = ready_client.post("/generate", json=body)
    assert response.status_code == 422
    locations = [error["loc"] for error in response.json()["detail"]]
    assert ["body", field] in locations


def test_readiness_turns_on_only_after_the_model_is_loaded(
    client_for: Callable[..., TestClient], make_settings: Callable[..., Settings], engine: Engine
) -> None:
    loading_may_finish = threading.Event()

    def slow_loader(_settings: Settings) -> Engine:
        loading_may_finish.wait(timeout=30)
        return engine

    client = client_for(make_settings(), slow_loader)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    early = client.post("/generate", json={"prompt": "too soon"})
    assert early.status_code == 503
    assert "retry-after" in early.headers

    loading_may_finish.set()
    _wait_until_ready(client)
    assert client.post("/generate", json={"prompt": "now"}).status_code == 200


def test_readiness_waits_for_the_warm_up(
    client_for: Callable[..., TestClient], make_settings: Callable[..., Settings], gated: Gated
) -> None:
    pipeline = gated.pipeline
    client = client_for(make_settings(warmup=True), lambda _settings: gated.engine)
    wait_for(pipeline.in_flight, what="the warm-up generation started")
    assert client.get("/readyz").status_code == 503
    pipeline.gate.set()
    _wait_until_ready(client)


def test_a_failed_load_fails_the_liveness_check(
    client_for: Callable[..., TestClient], make_settings: Callable[..., Settings]
) -> None:
    def broken_loader(_settings: Settings) -> Engine:
        raise OSError("no such model")

    client = client_for(make_settings(), broken_loader)
    wait_until(lambda: client.get("/healthz").status_code == 500, what="/healthz answers 500")
    assert "no such model" in client.get("/healthz").json()["error"]
    assert client.get("/readyz").status_code == 503


def test_concurrent_requests_are_micro_batched(
    client_for: Callable[..., TestClient], make_settings: Callable[..., Settings], gated: Gated
) -> None:
    pipeline = gated.pipeline
    client = client_for(make_settings(max_batch=4, batch_wait_ms=50), lambda _s: gated.engine)
    _wait_until_ready(client)
    batcher = _batcher(client)
    bodies = [{"prompt": f"tile {i}", "seed": i, "width": 64, "height": 64} for i in range(8)]
    bodies += [{"prompt": "wide", "seed": 99, "width": 128, "height": 64}]
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        futures = [pool.submit(client.post, "/generate", json=body) for body in bodies]
        # The first batch is held in the pipeline until every other request waits behind it.
        wait_for(pipeline.in_flight, what="the first batch reached the pipeline")
        waiting = len(bodies) - pipeline.batch_sizes[0]
        wait_until(lambda: batcher.queue_depth == waiting, what=f"{waiting} requests waiting")
        pipeline.gate.set()
        responses = [future.result(timeout=60) for future in futures]

    assert [response.status_code for response in responses] == [200] * len(bodies)
    sizes = [Image.open(io.BytesIO(response.content)).size for response in responses]
    assert sizes == [(64, 64)] * 8 + [(128, 64)]
    batches = list(batcher.batches)
    assert [batch.size for batch in batches] == pipeline.batch_sizes  # one pipeline call each
    assert sum(batch.size for batch in batches) == len(bodies)
    assert max(batch.size for batch in batches) > 1
    assert all(batch.size <= 4 for batch in batches)
    wide = [batch for batch in batches if batch.key.width == 128]
    assert [batch.size for batch in wide] == [1]  # never mixed with the 64x64 requests

    metrics = client.get("/metrics").text
    count = re.search(r"^imagegen_gpu_batch_size_count (\S+)$", metrics, re.MULTILINE)
    total = re.search(r"^imagegen_gpu_batch_size_sum (\S+)$", metrics, re.MULTILINE)
    assert count is not None and total is not None
    assert float(total.group(1)) == len(bodies)
    assert float(count.group(1)) < len(bodies)  # fewer pipeline calls than requests


def test_overload_answers_503_with_retry_after(
    client_for: Callable[..., TestClient], make_settings: Callable[..., Settings], gated: Gated
) -> None:
    pipeline = gated.pipeline
    client = client_for(
        make_settings(max_batch=1, max_queue=1, retry_after_seconds=7), lambda _s: gated.engine
    )
    _wait_until_ready(client)
    batcher = _batcher(client)
    with ThreadPoolExecutor(max_workers=2) as pool:
        in_flight = pool.submit(client.post, "/generate", json={"prompt": "first"})
        wait_for(pipeline.in_flight, what="the first request reached the pipeline")
        queued = pool.submit(client.post, "/generate", json={"prompt": "second"})
        wait_until(lambda: batcher.queue_depth == 1, what="the second request waiting")

        refused = client.post("/generate", json={"prompt": "third"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "7"

        pipeline.gate.set()
        assert in_flight.result(timeout=30).status_code == 200
        assert queued.result(timeout=30).status_code == 200
    assert 'imagegen_gpu_requests_total{outcome="overloaded"} 1.0' in client.get("/metrics").text


def test_metrics_expose_requests_latency_queue_and_gpu_memory(ready_client: TestClient) -> None:
    assert ready_client.post("/generate", json={"prompt": "count me"}).status_code == 200
    text = ready_client.get("/metrics").text
    assert 'imagegen_gpu_requests_total{outcome="ok"} 1.0' in text
    assert "imagegen_gpu_request_seconds_count 1.0" in text
    assert "imagegen_gpu_queue_depth 0.0" in text
    assert 'imagegen_gpu_memory_bytes{kind="allocated"} 0.0' in text  # CPU: no GPU memory
    assert "imagegen_gpu_ready 1.0" in text
