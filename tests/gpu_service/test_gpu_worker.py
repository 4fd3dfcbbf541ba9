"""The queue worker against moto: SQS, S3 and a state machine whose one state is the workflow's
``sqs:sendMessage.waitForTaskToken`` GPU step, executed by moto's ASL interpreter. Images come
from the tiny random-weight model (noise)."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws
from PIL import Image

from gpu_service.engine import Engine, ImageSpec
from gpu_service.settings import Settings
from gpu_service.worker import Worker
from imagegen_common.models import GenerateRequest, GenerationResult, ImageSlot, Job
from tests.gpu_service.conftest import gpu_state_definition

BUCKET = "imagegen-images-test"
ROLE_ARN = "arn:aws:iam::123456789012:role/imagegen-state-machine"


@dataclass
class Aws:
    sqs: Any
    s3: Any
    sfn: Any
    queue_url: str
    state_machine_arn: str

    def start(self, job: Job) -> str:
        return str(
            self.sfn.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=job.job_id,  # moto names an unnamed execution "None"
                input=json.dumps({"job": job.model_dump(mode="json")}),
            )["executionArn"]
        )

    def wait_for_message(self, timeout: float = 10.0) -> None:
        _wait_until(lambda: self.queue_counts()[0] >= 1, timeout)

    def queue_counts(self) -> tuple[int, int]:
        """(visible, in flight) messages on the GPU queue."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        )

    def finished(self, execution_arn: str, timeout: float = 20.0) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def ended() -> bool:
            result.update(self.sfn.describe_execution(executionArn=execution_arn))
            return result["status"] != "RUNNING"

        _wait_until(ended, timeout)
        return result


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


class Spy:
    """Wraps a boto3 client and records the calls made through it (name, keyword arguments)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[str] = []
        self.arguments: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            self.arguments.append(kwargs)
            return attribute(*args, **kwargs)

        return record


def _sent_cause(sfn: Spy) -> str:
    [failure] = [
        kwargs
        for name, kwargs in zip(sfn.calls, sfn.arguments, strict=True)
        if name == "send_task_failure"
    ]
    assert failure["error"] == "INVALID_JOB"
    return str(failure["cause"])


@pytest.fixture
def aws() -> Iterator[Aws]:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sqs = boto3.client("sqs", region_name="us-east-1")
        s3 = boto3.client("s3", region_name="us-east-1")
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName="imagegen-gpu-jobs")["QueueUrl"]
        s3.create_bucket(Bucket=BUCKET)
        arn = sfn.create_state_machine(
            name="gpu-step", definition=gpu_state_definition(queue_url), roleArn=ROLE_ARN
        )["stateMachineArn"]
        yield Aws(sqs, s3, sfn, queue_url, arn)


def _job(*, images: int = 1, width: int | None = 64, height: int | None = 64, **extra: Any) -> Job:
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    return Job(
        job_id=job_id,
        owner="apikey:test",
        submitted_at=datetime.now(UTC),
        request=GenerateRequest(prompt="a quiet harbour at dawn", num_images=images),
        backend="gpu",
        width=width,
        height=height,
        images=[
            ImageSlot(index=i, seed=100 + i, s3_key=f"images/{job_id}/{i}.png")
            for i in range(images)
        ],
        **extra,
    )


@pytest.fixture
def worker_for(
    aws: Aws, make_settings: Callable[..., Settings], engine: Engine
) -> Callable[..., Worker]:
    def build(
        engine_override: Engine | None = None, *, stepfunctions: Any = None, **overrides: Any
    ) -> Worker:
        values: dict[str, Any] = {
            "gpu_queue_url": aws.queue_url,
            "images_bucket": BUCKET,
            "receive_wait_seconds": 1,
            "visibility_timeout_seconds": 30,
            "heartbeat_interval_seconds": 5,
        }
        values.update(overrides)
        return Worker(
            make_settings(**values), engine_override or engine, stepfunctions=stepfunctions
        )

    return build


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
    execution = aws.sfn.start_execution(stateMachineArn=arn, name="broken-1", input="{}")
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

    def generate(self, specs: Sequence[ImageSpec]) -> list[bytes]:
        raise KilledWorkerError


def test_a_worker_killed_mid_batch_loses_nothing(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine
) -> None:
    job = _job(images=2)
    execution = aws.start(job)
    aws.wait_for_message()

    doomed = worker_for(DyingEngine(engine), visibility_timeout_seconds=1)
    with pytest.raises(KilledWorkerError):
        doomed.poll_once()
    assert aws.queue_counts() == (0, 1)  # taken, not reported, not deleted
    assert aws.sfn.describe_execution(executionArn=execution)["status"] == "RUNNING"

    survivor = worker_for()
    handled = 0
    deadline = time.monotonic() + 15
    while handled == 0 and time.monotonic() < deadline:
        handled = survivor.poll_once()  # the message reappears after its 1 s visibility

    described = aws.finished(execution)
    assert described["status"] == "SUCCEEDED"
    outcomes = GenerationResult.model_validate(json.loads(described["output"])["generation"])
    assert [outcome.s3_key for outcome in outcomes.images] == [s.s3_key for s in job.images]
    for slot in job.images:
        assert _png_size(aws, slot.s3_key) == (64, 64)
    assert aws.queue_counts() == (0, 0)


class SlowEngine(Engine):
    def __init__(self, inner: Engine, seconds: float) -> None:
        super().__init__(inner.pipeline, model_id=inner.model_id, device="cpu", dtype=inner.dtype)
        self.seconds = seconds

    def generate(self, specs: Sequence[ImageSpec]) -> list[bytes]:
        time.sleep(self.seconds)
        return super().generate(specs)


def test_a_long_batch_heartbeats_and_keeps_its_message_hidden(
    aws: Aws, make_settings: Callable[..., Settings], engine: Engine
) -> None:
    execution = aws.start(_job())
    aws.wait_for_message()
    sqs, sfn = Spy(aws.sqs), Spy(aws.sfn)
    settings = make_settings(
        gpu_queue_url=aws.queue_url,
        images_bucket=BUCKET,
        receive_wait_seconds=1,
        visibility_timeout_seconds=2,
        heartbeat_interval_seconds=0.3,
    )
    worker = Worker(settings, SlowEngine(engine, 3.5), sqs=sqs, s3=aws.s3, stepfunctions=sfn)
    stolen: list[Any] = []

    def rival() -> None:  # a second consumer polling while the slow batch runs
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            stolen.extend(
                aws.sqs.receive_message(QueueUrl=aws.queue_url, WaitTimeSeconds=0).get(
                    "Messages", []
                )
            )
            time.sleep(0.1)

    rival_thread = threading.Thread(target=rival)
    worker_thread = threading.Thread(target=worker.poll_once)
    worker_thread.start()
    time.sleep(0.3)
    rival_thread.start()
    worker_thread.join(timeout=30)
    rival_thread.join(timeout=30)

    assert stolen == []  # the visibility was extended past its 2 s
    assert aws.finished(execution)["status"] == "SUCCEEDED"
    assert sfn.calls.count("send_task_heartbeat") >= 3  # one on accept, then periodic
    assert sqs.calls.count("change_message_visibility") >= 3
    assert sfn.calls[-1] == "send_task_success"
    assert sqs.calls.index("delete_message") > sqs.calls.index("change_message_visibility")


class RecordingEngine(Engine):
    def __init__(self, inner: Engine) -> None:
        super().__init__(inner.pipeline, model_id=inner.model_id, device="cpu", dtype=inner.dtype)
        self.batch_sizes: list[int] = []

    def generate(self, specs: Sequence[ImageSpec]) -> list[bytes]:
        self.batch_sizes.append(len(specs))
        return super().generate(specs)


def test_compatible_jobs_share_pipeline_calls(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine
) -> None:
    jobs = [_job(images=2), _job(images=2), _job(images=1, width=128)]
    executions = [aws.start(job) for job in jobs]
    _wait_until(lambda: aws.queue_counts()[0] == 3)
    recording = RecordingEngine(engine)

    worker = worker_for(recording, max_batch=4)
    handled = 0
    while handled < 3:
        handled += worker.poll_once()

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
    assert aws.sfn.describe_execution(executionArn=execution)["status"] == "RUNNING"


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
