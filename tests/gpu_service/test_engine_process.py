"""The engine in a process of its own (``EngineProcess``, the worker's default): the same pixels
as the engine in this process, its denoising steps observed here, a failed call raised here as
itself, and a dead engine process turned into a stopped worker whose jobs another worker can take
(nothing answered, nothing deleted, the unstarted messages visible at once)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from gpu_service.engine import Engine
from gpu_service.engine_process import (
    EngineProcess,
    EngineProcessFailedToStart,
    EngineProcessLost,
)
from gpu_service.image_specs import DenoisingStep, ImageSpec
from gpu_service.settings import Settings
from gpu_service.worker import Worker
from tests.gpu_service.conftest import Aws, make_job, wait_until


@pytest.fixture(scope="module")
def engine_process(
    tiny_model_dir: object, make_settings: Callable[..., Settings]
) -> Iterator[EngineProcess]:
    started = EngineProcess.start(make_settings())
    yield started
    started.close()


def _specs(count: int, steps: int = 2) -> list[ImageSpec]:
    return [ImageSpec(f"a lantern, take {i}", 40 + i, 64, 64, steps, 0.0) for i in range(count)]


def test_the_engine_process_makes_the_pixels_the_engine_makes_and_reports_each_step(
    engine_process: EngineProcess, engine: Engine
) -> None:
    steps: list[DenoisingStep] = []
    specs = _specs(3)
    there = engine_process.generate_images(specs, on_step=steps.append)
    here = engine.generate_images(specs)
    assert len(there) == len(here) == 3
    for ours, theirs in zip(here, there, strict=True):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    assert steps == [DenoisingStep(1, 2), DenoisingStep(2, 2)]


def test_a_failed_call_is_raised_here_as_itself_and_the_engine_goes_on(
    engine_process: EngineProcess,
) -> None:
    mixed = [_specs(1)[0], ImageSpec("another size", 1, 128, 64, 2, 0.0)]
    with pytest.raises(ValueError, match="specs of one batch must share"):
        engine_process.generate_images(mixed)
    raising: list[int] = []

    def observer_that_raises(step: DenoisingStep) -> None:
        raising.append(step.step)
        raise RuntimeError("a broken observer")

    assert len(engine_process.generate_images(_specs(1), on_step=observer_that_raises)) == 1
    assert raising == [1, 2]  # the observer's failures were logged, the call went on


def test_an_engine_process_that_fails_to_load_says_why(
    make_settings: Callable[..., Settings],
) -> None:
    if torch.cuda.is_available():
        pytest.skip("the failure here is a CUDA device that this machine has")
    with pytest.raises(EngineProcessFailedToStart, match="DEVICE=cuda but torch sees no CUDA"):
        EngineProcess.start(make_settings(device="cuda"))


def test_a_worker_whose_engine_process_dies_stops_and_leaves_every_job_to_another_worker(
    aws: Aws, worker_for: Callable[..., Worker], make_settings: Callable[..., Settings]
) -> None:
    started = EngineProcess.start(make_settings())
    calls = threading.Event()

    class KilledMidCall:
        """The engine process, killed (as by the OOM killer) once its first call is under way."""

        def generate_images(self, specs: list[ImageSpec], on_step: object = None) -> list[object]:
            calls.set()
            assert started.pid is not None
            os.kill(started.pid, signal.SIGKILL)
            return started.generate_images(specs)

    jobs = [make_job() for _ in range(6)]
    executions = [aws.start(job) for job in jobs]
    aws.wait_for_message(len(jobs))
    worker = worker_for(KilledMidCall(), max_batch=2, visibility_timeout_seconds=30)
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(stop)
        except BaseException as error:  # what run raised, for the test thread
            failure.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        thread.join(timeout=60)
        assert not thread.is_alive(), "the worker did not stop when its engine died"
    finally:
        stop.set()
        thread.join(timeout=30)
        started.close()
    assert calls.is_set()
    assert len(failure) == 1 and isinstance(failure[0], EngineProcessLost)
    assert stop.is_set()
    assert [aws.status(execution) for execution in executions] == ["RUNNING"] * len(jobs)
    # Nothing was deleted; what was not started is visible again at once, the rest reappears
    # when its visibility runs out.
    visible, in_flight = aws.queue_counts()
    assert visible + in_flight == len(jobs)
    wait_until(lambda: aws.queue_counts()[0] >= len(jobs) - 2, 5, "the unstarted jobs handed back")
