"""The queue worker against moto: SQS, S3 and a state machine whose one state is the workflow's
``sqs:sendMessage.waitForTaskToken`` GPU step, executed by moto's ASL interpreter. Images come
from the tiny random-weight model (noise)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from PIL import Image

from gpu_service.engine import Engine
from gpu_service.image_specs import ImageSpec
from gpu_service.settings import Settings
from gpu_service.worker import Worker
from imagegen_common.models import GenerationResult
from tests.gpu_service.conftest import (
    BUCKET,
    ROLE_ARN,
    Aws,
    Spy,
    gpu_state_definition,
    wait_for,
)
from tests.gpu_service.conftest import make_job as _job


def _sent_cause(sfn: Spy) -> str:
    [failure] = sfn.called("send_task_failure")
    assert failure["error"] == "INVALID_JOB"
    return str(failure["cause"])


def _png_size(aws: Aws, key: str) -> tuple[int, int]:
    body = aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return Image.open(io.BytesIO(body)).size


def test_execution_completes_with_the_s3_locations(
    aws: Aws, worker_for: Callable[..., Worker]
) -> None:
    job = _job(images=2, width=96, height=64)
    execution = aws.start(job)
    aws.wait_for_message()

    assert worker_for().poll_once() == 1

    described = aws.finished(execution)
    assert described["status"] == "SUCCEEDED"
    generation = GenerationResult.model_validate(json.loads(described["output"])["generation"])
    assert [
        (o.index, o.seed, o.bucket, o.s3_key, o.width, o.height) for o in generation.images
    ] == [(slot.index, slot.seed, BUCKET, slot.s3_key, 96, 64) for slot in job.images]
    for slot in job.images:
        assert _png_size(aws, slot.s3_key) == (96, 64)
    assert aws.queue_counts() == (0, 0)  # deleted once reported


def test_a_job_is_made_with_its_controls_and_stored_in_its_format(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagegen_common.models import GenerationControls, OutputFormat, Scheduler

    controls = GenerationControls(
        output_format=OutputFormat.WEBP,
        output_quality=60,
        steps=3,
        guidance_scale=0.0,
        scheduler=Scheduler.DDIM,
    )
    job = _job(controls=controls)
    calls: list[Sequence[ImageSpec]] = []
    real_generate = engine.generate_images

    def recording(specs: Sequence[ImageSpec], on_step: Any = None) -> list[Any]:
        calls.append(specs)
        return real_generate(specs, on_step)

    monkeypatch.setattr(engine, "generate_images", recording)
    execution = aws.start(job)
    aws.wait_for_message()
    worker_for().poll_once()

    assert aws.finished(execution)["status"] == "SUCCEEDED"
    [[spec]] = calls
    assert (spec.steps, spec.guidance, spec.scheduler) == (3, 0.0, "ddim")
    stored = aws.s3.get_object(Bucket=BUCKET, Key=job.images[0].s3_key)
    assert stored["ContentType"] == "image/webp"
    assert Image.open(io.BytesIO(stored["Body"].read())).format == "WEBP"


def test_the_jobs_bucket_wins_over_the_default(aws: Aws, worker_for: Callable[..., Worker]) -> None:
    aws.s3.create_bucket(Bucket="tenant-bucket")
    job = _job(bucket="tenant-bucket")
    execution = aws.start(job)
    aws.wait_for_message()
    worker_for().poll_once()
    assert aws.finished(execution)["status"] == "SUCCEEDED"
    aws.s3.head_object(Bucket="tenant-bucket", Key=job.images[0].s3_key)


@pytest.mark.parametrize(
    ("job_changes", "cause_part"),
    [
        ({"width": None, "height": None}, "job.width and job.height must be set"),
        ({"width": 100}, "job.width must be a multiple of 8"),
        ({"images": []}, "job.images is empty"),
    ],
)
def test_a_bad_job_fails_the_task_with_invalid_job(
    aws: Aws, worker_for: Callable[..., Worker], job_changes: dict[str, Any], cause_part: str
) -> None:
    job = _job().model_copy(update=job_changes)
    execution = aws.start(job)
    aws.wait_for_message()
    sfn = Spy(aws.sfn)
    worker = worker_for(stepfunctions=sfn)

    worker.poll_once()

    described = aws.finished(execution)
    assert described["status"] == "FAILED"
    assert described["error"] == "INVALID_JOB"
    assert cause_part in _sent_cause(sfn)  # moto 5.2.5 drops the cause from the execution
    assert aws.queue_counts() == (0, 0)


def test_a_job_without_a_bucket_anywhere_is_invalid(
    aws: Aws, worker_for: Callable[..., Worker]
) -> None:
    execution = aws.start(_job())
    aws.wait_for_message()
    sfn = Spy(aws.sfn)
    worker = worker_for(images_bucket=None, stepfunctions=sfn)
    worker.poll_once()
    described = aws.finished(execution)
    assert (described["status"], described["error"]) == ("FAILED", "INVALID_JOB")
    assert "IMAGES_BUCKET" in _sent_cause(sfn)


def test_an_unparseable_job_with_a_token_fails_its_task(
    aws: Aws, worker_for: Callable[..., Worker]
) -> None:
    # A state that sent a broken job: the token is there, the job is not a Job.
    broken = json.loads(gpu_state_definition(aws.queue_url))
    broken["States"]["Generate on GPU"]["Parameters"]["MessageBody"]["job"] = {"nonsense": 1}
    del broken["States"]["Generate on GPU"]["Parameters"]["MessageBody"]["job.$"]
    arn = aws.sfn.create_state_machine(
        name="broken-gpu-step", definition=json.dumps(broken), roleArn=ROLE_ARN
    )["stateMachineArn"]
    execution = aws.sfn.start_execution(
        stateMachineArn=arn, name="broken-1", input=json.dumps({"job": {"gpu_timeout_seconds": 60}})
    )
    aws.wait_for_message()
    sfn = Spy(aws.sfn)
    worker = worker_for(stepfunctions=sfn)

    worker.poll_once()

    described = aws.finished(execution["executionArn"])
    assert (described["status"], described["error"]) == ("FAILED", "INVALID_JOB")
    assert "job.job_id" in _sent_cause(sfn)
    assert aws.queue_counts() == (0, 0)


def test_a_message_without_a_token_is_left_for_the_dead_letter_queue(
    aws: Aws, worker_for: Callable[..., Worker]
) -> None:
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody="not json at all")
    assert worker_for().poll_once() == 1
    assert aws.queue_counts() == (0, 1)  # not deleted: in flight until it reappears


class KilledWorkerError(BaseException):
    """Stands for the process dying: nothing in the worker catches it."""


class DyingEngine(Engine):
    def __init__(self, inner: Engine) -> None:
        super().__init__(inner.pipeline, model_id=inner.model_id, device="cpu", dtype=inner.dtype)

    def generate_images(self, specs: Sequence[ImageSpec], on_step: Any = None) -> list[Any]:
        raise KilledWorkerError


def test_a_worker_killed_mid_batch_loses_nothing(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine
) -> None:
    job = _job(images=2)
    execution = aws.start(job)
    aws.wait_for_message()

    doomed = worker_for(
        DyingEngine(engine), visibility_timeout_seconds=1, heartbeat_interval_seconds=0.3
    )
    with pytest.raises(KilledWorkerError):
        doomed.poll_once()
    assert aws.queue_counts() == (0, 1)  # taken, not reported, not deleted
    assert aws.status(execution) == "RUNNING"

    survivor = worker_for()
    handled = 0
    deadline = time.monotonic() + 15
    while handled == 0 and time.monotonic() < deadline:
        handled = survivor.poll_once()  # the message reappears after its 1 s visibility
    assert handled == 1

    described = aws.finished(execution)
    assert described["status"] == "SUCCEEDED"
    outcomes = GenerationResult.model_validate(json.loads(described["output"])["generation"])
    assert [outcome.s3_key for outcome in outcomes.images] == [s.s3_key for s in job.images]
    for slot in job.images:
        assert _png_size(aws, slot.s3_key) == (64, 64)
    assert aws.queue_counts() == (0, 0)


class GatedEngine(Engine):
    """Sets ``started`` when a batch begins, then holds it until ``release`` is set."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner.pipeline, model_id=inner.model_id, device="cpu", dtype=inner.dtype)
        self.started = threading.Event()
        self.release = threading.Event()

    def generate_images(self, specs: Sequence[ImageSpec], on_step: Any = None) -> list[Any]:
        self.started.set()
        wait_for(self.release, 30, "the test releases the batch")
        return super().generate_images(specs, on_step)


def test_a_long_batch_heartbeats_and_keeps_its_message_hidden(
    aws: Aws, make_settings: Callable[..., Settings], engine: Engine
) -> None:
    execution = aws.start(_job())
    aws.wait_for_message()
    sqs, sfn = Spy(aws.sqs), Spy(aws.sfn)
    visibility = 2
    settings = make_settings(
        gpu_queue_url=aws.queue_url,
        images_bucket=BUCKET,
        receive_wait_seconds=1,
        visibility_timeout_seconds=visibility,
        heartbeat_interval_seconds=0.3,
    )
    gated = GatedEngine(engine)
    worker = Worker(settings, gated, sqs=sqs, s3=aws.s3, stepfunctions=sfn)
    worker_thread = threading.Thread(target=worker.poll_once)
    worker_thread.start()
    try:
        wait_for(gated.started, 10, "the batch started")
        # A second consumer long-polls for half as long again as the visibility timeout.
        stolen: list[Any] = []
        rival_until = time.monotonic() + visibility * 1.5
        while time.monotonic() < rival_until:
            stolen += aws.sqs.receive_message(QueueUrl=aws.queue_url, WaitTimeSeconds=1).get(
                "Messages", []
            )
    finally:
        gated.release.set()
        worker_thread.join(timeout=30)
    assert not worker_thread.is_alive()

    assert stolen == []  # the visibility was extended past its 2 s
    assert aws.finished(execution)["status"] == "SUCCEEDED"
    assert sfn.calls.count("send_task_heartbeat") >= 3  # one on accept, then periodic
    assert sqs.calls.count("change_message_visibility_batch") >= 3
    assert "send_task_success" in sfn.calls
    assert "send_task_failure" not in sfn.calls
    assert sqs.calls.index("delete_message_batch") > sqs.calls.index(
        "change_message_visibility_batch"
    )


class RecordingEngine(Engine):
    def __init__(self, inner: Engine) -> None:
        super().__init__(inner.pipeline, model_id=inner.model_id, device="cpu", dtype=inner.dtype)
        self.batch_sizes: list[int] = []

    def generate_images(self, specs: Sequence[ImageSpec], on_step: Any = None) -> list[Any]:
        self.batch_sizes.append(len(specs))
        return super().generate_images(specs, on_step)


def test_compatible_jobs_share_pipeline_calls(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine
) -> None:
    jobs = [_job(images=2), _job(images=2), _job(images=1, width=128)]
    executions = [aws.start(job) for job in jobs]
    aws.wait_for_message(count=3)
    recording = RecordingEngine(engine)

    worker = worker_for(recording, max_batch=4)
    handled = 0
    deadline = time.monotonic() + 20
    while handled < 3 and time.monotonic() < deadline:
        handled += worker.poll_once()
    assert handled == 3

    assert [aws.finished(arn)["status"] for arn in executions] == ["SUCCEEDED"] * 3
    assert sorted(recording.batch_sizes) == [1, 4]  # 2 + 2 at 64x64 together, the 128 alone


def test_a_stopped_worker_hands_back_what_it_received_and_exits(
    aws: Aws, worker_for: Callable[..., Worker]
) -> None:
    execution = aws.start(_job())
    aws.wait_for_message()
    stop = threading.Event()
    stop.set()  # SIGTERM arrived while the long poll was waiting

    assert worker_for().poll_once(stop) == 1
    assert aws.queue_counts() == (1, 0)  # visible again at once, for another worker
    assert aws.status(execution) == "RUNNING"


def test_run_consumes_until_stopped(aws: Aws, worker_for: Callable[..., Worker]) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=worker_for().run, args=(stop,))
    thread.start()
    try:
        execution = aws.start(_job())
        assert aws.finished(execution)["status"] == "SUCCEEDED"
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_the_worker_needs_a_queue(make_settings: Callable[..., Settings], engine: Engine) -> None:
    with pytest.raises(ValueError, match="GPU_QUEUE_URL"):
        Worker(make_settings(gpu_queue_url=None), engine)


class _Clock:
    """A perf_counter stand-in that moves only when the engine says a call took time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TimedEngine(RecordingEngine):
    """Makes real (tiny) images; each pipeline call takes ``seconds`` on ``clock``."""

    def __init__(self, inner: Engine, clock: _Clock, seconds: float) -> None:
        super().__init__(inner)
        self.clock = clock
        self.seconds = seconds

    def generate_images(self, specs: Sequence[ImageSpec], on_step: Any = None) -> list[Any]:
        images = super().generate_images(specs, on_step)
        self.clock.now += self.seconds
        return images


def test_each_image_costs_its_share_of_the_measured_call(
    aws: Aws, make_settings: Callable[..., Settings], engine: Engine
) -> None:
    jobs = [_job(images=3), _job(images=1)]
    executions = [aws.start(job) for job in jobs]
    aws.wait_for_message(count=2)
    clock = _Clock()
    timed = TimedEngine(engine, clock, seconds=3.2)
    settings = make_settings(
        gpu_queue_url=aws.queue_url,
        images_bucket=BUCKET,
        receive_wait_seconds=1,
        max_batch=4,
        gpu_price_per_hour_usd=1.8,
    )
    worker = Worker(settings, timed, sqs=aws.sqs, s3=aws.s3, stepfunctions=aws.sfn, clock=clock)

    handled = 0
    deadline = time.monotonic() + 20
    while handled < 2 and time.monotonic() < deadline:
        handled += worker.poll_once()

    assert timed.batch_sizes == [4]  # both jobs in one pipeline call
    per_image = 3.2 * 1.8 / 3600 / 4
    for job, execution in zip(jobs, executions, strict=True):
        described = aws.finished(execution)
        assert described["status"] == "SUCCEEDED"
        output = json.loads(described["output"])["generation"]
        generation = GenerationResult.model_validate(output)
        costs = [outcome.cost for outcome in generation.images]
        assert all(cost is not None for cost in costs)
        assert [cost.usd for cost in costs if cost] == [pytest.approx(per_image)] * len(job.images)
        assert {cost.basis for cost in costs if cost} == {
            "GPU 3.200 s x $1.8/GPU-hour / 4 images in the call"
        }
