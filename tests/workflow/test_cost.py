"""The cost a job's result event carries, from the real workflow (template.yaml in moto): the
Bedrock price of each image made, and for the GPU the worker's measured seconds of the call."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from gpu_service.image_specs import ImageSpec
from gpu_service.settings import Settings
from gpu_service.worker import Worker
from imagegen_common.pricing import BEDROCK_IMAGE_PRICES
from tests.workflow.conftest import Workflow, tiny_png

CORE = "stability.stable-image-core-v1:1"
CALL_SECONDS = 4.0
PRICE_PER_HOUR = 1.006


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _TimedEngine:
    """The engine's face as the worker sees it: PNGs of the asked size, each call taking
    ``CALL_SECONDS`` on the worker's clock."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock

    def generate_images(self, specs: Sequence[ImageSpec], on_step: Any = None) -> list[Any]:
        self.clock.now += CALL_SECONDS
        return [tiny_png(spec.width, spec.height) for spec in specs]


@pytest.fixture
def gpu_worker(workflow: Workflow) -> Iterator[Callable[[], None]]:
    """``start()``: the real queue worker on the stack's GPU queue, with a timed stand-in engine."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start() -> None:
        settings = Settings(
            gpu_queue_url=workflow.stack.queues["GpuJobQueue"],
            images_bucket=workflow.bucket,
            receive_wait_seconds=1,
            gpu_price_per_hour_usd=PRICE_PER_HOUR,
        )
        clock = _Clock()
        worker = Worker(settings, _TimedEngine(clock), clock=clock)  # type: ignore[arg-type]
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), "the GPU worker did not stop"


def test_a_bedrock_job_costs_the_models_price_per_image_made(workflow: Workflow) -> None:
    execution_id = workflow.submit({"prompt": "two lighthouses", "num_images": 2})

    assert workflow.wait(execution_id)["status"] == "SUCCEEDED"
    [event] = workflow.result_events(execution_id)
    detail = assert_event_11(event, "Image Generated", execution_id)
    assert detail["cost"]["usd"] == pytest.approx(2 * BEDROCK_IMAGE_PRICES[CORE].usd)
    assert detail["cost"]["basis"].startswith(f"2 x Bedrock price per image ({CORE}, $0.04")


def test_a_gpu_job_costs_its_share_of_the_measured_seconds(
    workflow: Workflow,
    gpu_worker: Callable[[], None],
) -> None:
    gpu_worker()
    execution_id = workflow.submit({"prompt": "a red bicycle", "backend": "gpu", "num_images": 2})

    assert workflow.wait(execution_id)["status"] == "SUCCEEDED"
    [event] = workflow.result_events(execution_id)
    detail = assert_event_11(event, "Image Generated", execution_id)
    # One pipeline call made both images: the job pays the whole call.
    assert detail["cost"]["usd"] == pytest.approx(CALL_SECONDS * PRICE_PER_HOUR / 3600, abs=1e-8)
    assert detail["cost"]["basis"] == (
        f"2 x GPU {CALL_SECONDS:.3f} s x ${PRICE_PER_HOUR:g}/GPU-hour / 2 images in the call"
    )


def test_a_failed_job_reports_zero_spent_with_its_basis(workflow: Workflow) -> None:
    workflow.bedrock.fail_next("filter_output", times=1)
    execution_id = workflow.submit({"prompt": "a filtered picture"})

    assert workflow.wait(execution_id)["status"] == "FAILED"
    [event] = workflow.result_events(execution_id)
    detail = assert_event_11(event, "Image Generation Failed", execution_id)
    assert detail["cost"]["usd"] == 0
    assert "no image was made" in detail["cost"]["basis"]


def assert_event_11(event: dict[str, Any], detail_type: str, execution_id: str) -> dict[str, Any]:
    assert event["detail-type"] == detail_type
    detail: dict[str, Any] = event["detail"]
    assert detail["execution_id"] == execution_id
    assert detail["schema_version"] == "1.2"
    return detail
