"""Faults around the worker: tasks that end before their job runs, an engine or S3 or SQS that
fails for a while, a job that breaks the pipeline, a stop between batches. Step Functions is a
stand-in here (``FakeStepFunctions``): the tasks are the test's own, so it can end them at will;
SQS and S3 are moto."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from pydantic import ValidationError

from gpu_service.engine import Engine
from gpu_service.image_specs import ImageSpec
from gpu_service.settings import Settings
from gpu_service.worker import Worker
from imagegen_common.models import GenerateRequest, GenerationResult, Job
from tests.gpu_service.conftest import (
    Aws,
    FakeStepFunctions,
    client_error,
    job_message,
    make_job,
    wait_until,
)


class ScriptedEngine(Engine):
    """The tiny engine, with ``before(specs)`` run ahead of each pipeline call (to raise, or to
    change the world); records the specs of every call."""

    def __init__(self, inner: Engine, before: Callable[[Sequence[ImageSpec]], None]) -> None:
        super().__init__(inner.pipeline, model_id=inner.model_id, device="cpu", dtype=inner.dtype)
        self.before = before
        self.calls: list[list[ImageSpec]] = []

    def generate_images(self, specs: Sequence[ImageSpec], on_step: Any = None) -> list[Any]:
        self.calls.append(list(specs))
        self.before(specs)
        return super().generate_images(specs, on_step)


def _send(aws: Aws, token: str, job: Job) -> None:
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=job_message(token, job))


@contextmanager
def _running(worker: Worker) -> Iterator[threading.Thread]:
    """``worker.run`` in a thread for the block; stopped and joined after it."""
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="worker")
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()


def test_a_job_whose_task_has_ended_is_dropped_without_the_engine_running(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine
) -> None:
    sfn = FakeStepFunctions()
    sfn.ended.add("stopped-task")  # SendTaskHeartbeat answers TaskTimedOut
    _send(aws, "stopped-task", make_job())
    aws.wait_for_message()
    scripted = ScriptedEngine(engine, lambda specs: None)

    assert worker_for(scripted, stepfunctions=sfn).poll_once() == 1

    assert scripted.calls == []
    assert sfn.heartbeats == ["stopped-task"]
    assert (sfn.successes, sfn.failures) == ({}, {})
    assert aws.queue_counts() == (0, 0)  # deleted: nobody is waiting for it


def test_a_job_whose_task_ends_while_it_waits_is_dropped_before_its_batch(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine
) -> None:
    """Two sizes, two calls: the job of the second is stopped after it was accepted. It is
    checked again while the first call runs (the engine does not wait for that check) and
    dropped before its own call."""

    class StoppedAfterAccept(FakeStepFunctions):
        def send_task_heartbeat(self, *, taskToken: str) -> dict[str, Any]:
            if taskToken == "second-size" and "second-size" in self.heartbeats:
                self.ended.add(taskToken)  # stopped after its first heartbeat (at accept)
            return super().send_task_heartbeat(taskToken=taskToken)

    sfn = StoppedAfterAccept()
    for width, token in ((64, "first-size"), (128, "second-size")):
        _send(aws, token, make_job(width=width))
    aws.wait_for_message(count=2)
    scripted = ScriptedEngine(engine, lambda specs: None)

    worker = worker_for(scripted, stepfunctions=sfn, max_batch=4, recheck_after_seconds=0)
    assert worker.poll_once() == 2

    assert [call[0].width for call in scripted.calls] == [64]  # the second never reached it
    assert list(sfn.successes) == ["first-size"]
    assert sfn.heartbeats.count("second-size") == 2  # at accept, and again before its call
    assert sfn.failures == {}
    assert aws.queue_counts() == (0, 0)  # both messages deleted


def test_a_job_that_breaks_the_pipeline_fails_alone(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine
) -> None:
    sfn = FakeStepFunctions()
    _send(aws, "good", make_job())
    bad = make_job().model_copy(update={"request": GenerateRequest(prompt="poison apple")})
    _send(aws, "breaks-the-pipeline", bad)
    aws.wait_for_message(count=2)

    def refuse_poison(specs: Sequence[ImageSpec]) -> None:
        if any("poison" in spec.prompt for spec in specs):
            raise RuntimeError("the pipeline choked")

    scripted = ScriptedEngine(engine, refuse_poison)
    assert worker_for(scripted, stepfunctions=sfn, max_batch=4).poll_once() == 2

    assert sorted(len(call) for call in scripted.calls) == [1, 1, 2]  # together, then each alone
    assert list(sfn.successes) == ["good"]
    GenerationResult.model_validate_json(sfn.successes["good"])
    error, cause = sfn.failures["breaks-the-pipeline"]
    assert (error, cause) == ("MODEL_ERROR", "RuntimeError: the pipeline choked")
    assert aws.queue_counts() == (0, 0)


class FlakyClient:
    """Wraps a boto3 client: calls of ``name`` raise the exceptions in ``failures[name]`` first."""

    def __init__(self, client: Any, failures: dict[str, list[Exception]]) -> None:
        self._client = client
        self.failures = failures
        self.counts: dict[str, int] = {}
        self._changed = threading.Condition()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._changed:
                self.counts[name] = self.counts.get(name, 0) + 1
                self._changed.notify_all()
                pending = self.failures.get(name)
                failure = pending.pop(0) if pending else None
            if failure is not None:
                raise failure
            return attribute(*args, **kwargs)

        return call

    def wait_for_calls(self, name: str, count: int, timeout: float = 10.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.counts.get(name, 0) >= count, timeout):
                raise AssertionError(f"fewer than {count} calls of {name} within {timeout} s")


def test_the_loop_survives_failing_sqs_and_s3_rounds(
    aws: Aws, worker_for: Callable[..., Worker]
) -> None:
    sqs = FlakyClient(aws.sqs, {"receive_message": [RuntimeError("SQS is having a bad day")]})
    s3 = FlakyClient(
        aws.s3, {"put_object": [EndpointConnectionError(endpoint_url="https://s3.invalid")]}
    )
    sfn = FakeStepFunctions()
    worker = worker_for(
        sqs=sqs,
        s3=s3,
        stepfunctions=sfn,
        visibility_timeout_seconds=1,
        heartbeat_interval_seconds=0.3,
    )
    _send(aws, "patient", make_job())

    with _running(worker) as thread:
        # Round 1: the receive raises. Round 2: the PNG cannot be written, so nothing is reported
        # and the message reappears after its visibility timeout. Then the job is done.
        sfn.wait(lambda: "patient" in sfn.successes, 20, "the job succeeded")
        assert thread.is_alive()

    assert sqs.failures["receive_message"] == [] and s3.failures["put_object"] == []
    assert s3.counts["put_object"] == 2
    assert sfn.failures == {}
    assert aws.queue_counts() == (0, 0)


def test_the_loop_survives_an_engine_failure(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine
) -> None:
    sfn = FakeStepFunctions()

    def fail_first_call(specs: Sequence[ImageSpec]) -> None:
        if len(scripted.calls) == 1:
            raise MemoryError("CUDA out of memory (test)")

    scripted = ScriptedEngine(engine, fail_first_call)
    with _running(worker_for(scripted, stepfunctions=sfn)) as thread:
        _send(aws, "unlucky", make_job())
        sfn.wait_for_answers(1)
        _send(aws, "lucky", make_job())
        sfn.wait_for_answers(2)
        assert thread.is_alive()

    assert sfn.failures["unlucky"][0] == "MODEL_ERROR"
    assert list(sfn.successes) == ["lucky"]


def test_the_heartbeat_thread_survives_errors(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine
) -> None:
    sqs = FlakyClient(
        aws.sqs,
        {
            "change_message_visibility_batch": [
                RuntimeError("lost"),
                client_error("Throttling", "x"),
            ]
        },
    )

    class FailingHeartbeats(FakeStepFunctions):
        def send_task_heartbeat(self, *, taskToken: str) -> dict[str, Any]:
            super().send_task_heartbeat(taskToken=taskToken)
            if len(self.heartbeats) > 1:  # all but the heartbeat at accept
                raise RuntimeError("Step Functions unreachable")
            return {}

    sfn = FailingHeartbeats()

    def hold_until_extended(specs: Sequence[ImageSpec]) -> None:
        # The batch outlasts two failed extensions and two good ones.
        sqs.wait_for_calls("change_message_visibility_batch", 4)

    scripted = ScriptedEngine(engine, hold_until_extended)
    worker = worker_for(
        scripted,
        sqs=sqs,
        stepfunctions=sfn,
        visibility_timeout_seconds=3,
        heartbeat_interval_seconds=0.1,
    )
    _send(aws, "steady", make_job())
    aws.wait_for_message()

    assert worker.poll_once() == 1

    assert list(sfn.successes) == ["steady"]
    assert len(sfn.heartbeats) >= 3  # the thread kept going after a heartbeat raised
    assert aws.queue_counts() == (0, 0)


def test_the_liveness_file_is_touched_by_every_round_even_a_failed_one(
    aws: Aws, worker_for: Callable[..., Worker], tmp_path: Path
) -> None:
    liveness = tmp_path / "alive"
    sqs = FlakyClient(aws.sqs, {"receive_message": [RuntimeError("down")] * 1000})
    with _running(worker_for(sqs=sqs, liveness_file=str(liveness))):
        wait_until(liveness.exists, 10, "touched when polling begins")
        liveness.unlink()
        # Touched before the first receive, so that one may not have been counted yet.
        sqs.wait_for_calls("receive_message", sqs.counts.get("receive_message", 0) + 2)
        wait_until(liveness.exists, 10, "touched again after a failed round")


def test_a_stop_between_batches_hands_back_the_jobs_not_started(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine
) -> None:
    sfn = FakeStepFunctions()
    for width, token in ((64, "small"), (128, "large")):
        _send(aws, token, make_job(width=width))
    aws.wait_for_message(count=2)
    stop = threading.Event()
    scripted = ScriptedEngine(engine, lambda specs: stop.set())  # SIGTERM during the first batch

    assert worker_for(scripted, stepfunctions=sfn, max_batch=4).poll_once(stop) == 2

    assert len(scripted.calls) == 1
    assert len(sfn.successes) == 1 and sfn.failures == {}
    assert aws.queue_counts() == (1, 0)  # the other job: visible again at once
    [message] = aws.sqs.receive_message(QueueUrl=aws.queue_url)["Messages"]
    assert json.loads(message["Body"])["task_token"] not in sfn.successes


def test_an_answer_that_cannot_be_sent_keeps_the_message(
    aws: Aws, worker_for: Callable[..., Worker]
) -> None:
    class Unreachable(FakeStepFunctions):
        def send_task_failure(self, *, taskToken: str, error: str, cause: str) -> dict[str, Any]:
            raise client_error("ServiceUnavailable", "SendTaskFailure")

    _send(aws, "unheard", make_job(width=100))  # invalid: not a multiple of 8
    aws.wait_for_message()

    assert worker_for(stepfunctions=Unreachable()).poll_once() == 1

    assert aws.queue_counts() == (0, 1)  # not deleted: it reappears and the answer is retried


def test_the_heartbeat_must_be_well_within_the_visibility_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VISIBILITY_TIMEOUT_SECONDS", "30")
    monkeypatch.setenv("HEARTBEAT_INTERVAL_SECONDS", "20")
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None)  # type: ignore[call-arg]
    message = str(raised.value)
    assert "HEARTBEAT_INTERVAL_SECONDS (20) must be at most a third of" in message
    assert "VISIBILITY_TIMEOUT_SECONDS (30)" in message

    monkeypatch.setenv("HEARTBEAT_INTERVAL_SECONDS", "10")
    assert Settings(_env_file=None).heartbeat_interval_seconds == 10  # type: ignore[call-arg]


def test_the_defaults_fit_the_queue() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (defaults.visibility_timeout_seconds, defaults.heartbeat_interval_seconds) == (60, 20)
