"""The HTTP server through FastAPI's TestClient (lifespan included), on the tiny model (noise)."""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from gpu_service.engine import Engine, ImageSpec
from gpu_service.server import ServiceState, create_app
from gpu_service.settings import Settings


class GatedEngine(Engine):
    """The tiny engine, but each generate call waits for ``gate`` (to hold a batch in flight)."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner.pipeline, model_id=inner.model_id, device="cpu", dtype=inner.dtype)
        self.gate = threading.Event()
        self.in_flight = threading.Event()

    def generate(self, specs: Sequence[ImageSpec]) -> list[bytes]:
        self.in_flight.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("gate never opened")
        return super().generate(specs)


def _service(app: FastAPI) -> ServiceState:
    state = app.state.service
    assert isinstance(state, ServiceState)
    return state


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


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
    _wait_until(lambda: client.get("/readyz").status_code == 200)
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
    _wait_until(lambda: client.get("/readyz").status_code == 200)
    assert client.post("/generate", json={"prompt": "now"}).status_code == 200


def test_readiness_waits_for_the_warm_up(
    client_for: Callable[..., TestClient], make_settings: Callable[..., Settings], engine: Engine
) -> None:
    gated = GatedEngine(engine)
    client = client_for(make_settings(warmup=True), lambda _settings: gated)
    assert gated.in_flight.wait(timeout=10)  # the warm-up generation has started
    assert client.get("/readyz").status_code == 503
    gated.gate.set()
    _wait_until(lambda: client.get("/readyz").status_code == 200)


def test_a_failed_load_fails_the_liveness_check(
    client_for: Callable[..., TestClient], make_settings: Callable[..., Settings]
) -> None:
    def broken_loader(_settings: Settings) -> Engine:
        raise OSError("no such model")

    client = client_for(make_settings(), broken_loader)
    _wait_until(lambda: client.get("/healthz").status_code == 500)
    assert "no such model" in client.get("/healthz").json()["error"]
    assert client.get("/readyz").status_code == 503


def test_concurrent_requests_are_micro_batched(
    client_for: Callable[..., TestClient], make_settings: Callable[..., Settings], engine: Engine
) -> None:
    gated = GatedEngine(engine)
    client = client_for(make_settings(max_batch=4, batch_wait_ms=50), lambda _s: gated)
    _wait_until(lambda: client.get("/readyz").status_code == 200)
    bodies = [{"prompt": f"tile {i}", "seed": i, "width": 64, "height": 64} for i in range(8)]
    bodies += [{"prompt": "wide", "seed": 99, "width": 128, "height": 64}]
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        futures = [pool.submit(client.post, "/generate", json=body) for body in bodies]
        # The first batch is held in the engine while the others queue up behind it.
        assert gated.in_flight.wait(timeout=10)
        _wait_until(lambda: _service(client.app).batcher.queue_depth >= 1)  # type: ignore[attr-defined,union-attr]
        time.sleep(0.3)
        gated.gate.set()
        responses = [future.result(timeout=60) for future in futures]

    assert [response.status_code for response in responses] == [200] * len(bodies)
    sizes = [Image.open(io.BytesIO(response.content)).size for response in responses]
    assert sizes == [(64, 64)] * 8 + [(128, 64)]
    batches = list(_service(client.app).batcher.batches)  # type: ignore[attr-defined,union-attr]
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
    client_for: Callable[..., TestClient], make_settings: Callable[..., Settings], engine: Engine
) -> None:
    gated = GatedEngine(engine)
    client = client_for(
        make_settings(max_batch=1, max_queue=1, retry_after_seconds=7), lambda _s: gated
    )
    _wait_until(lambda: client.get("/readyz").status_code == 200)
    state = _service(client.app)  # type: ignore[arg-type]
    with ThreadPoolExecutor(max_workers=2) as pool:
        in_flight = pool.submit(client.post, "/generate", json={"prompt": "first"})
        assert gated.in_flight.wait(timeout=10)
        queued = pool.submit(client.post, "/generate", json={"prompt": "second"})
        _wait_until(lambda: state.batcher is not None and state.batcher.queue_depth == 1)

        refused = client.post("/generate", json={"prompt": "third"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "7"

        gated.gate.set()
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
