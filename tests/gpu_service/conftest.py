"""Fixtures of the GPU service suite: the tiny random-weight model (its images are noise), and the
AWS side of the queue worker (moto in-process, a stand-in Step Functions client, a client spy)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from gpu_service.engine import Engine
from gpu_service.path_bench import gpu_state_definition
from gpu_service.settings import Settings
from gpu_service.tiny_model import ensure_tiny_model
from gpu_service.worker import Worker
from imagegen.local.moto_aws import local_aws
from imagegen_common.models import GenerateRequest, GpuJobMessage, ImageSlot, Job

REPO_ROOT = Path(__file__).resolve().parents[2]
__all__ = ["gpu_state_definition"]  # the worker tests' state machine, with the benchmark's
BUCKET = "imagegen-images-test"
ROLE_ARN = "arn:aws:iam::123456789012:role/imagegen-state-machine"
MAX_RECEIVES = 3
"""The test queue's redrive policy: after this many receives a message goes to the DLQ."""


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny pipeline, saved with save_pretrained where the local stack keeps it
    (``.tiny-model/``): built once per checkout, by the first test process that needs it (the
    build is renamed into place, so processes running at once never see half of it)."""
    return ensure_tiny_model()


def _settings(model_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: CPU, the tiny model, small images, no warm-up unless asked."""
    values: dict[str, Any] = {
        "model_id": str(model_dir),
        "device": "cpu",
        "dtype": "float32",
        "default_width": 64,
        "default_height": 64,
        "default_steps": 2,
        "default_guidance": 0.0,
        "warmup": False,
        "max_batch": 4,
        "batch_wait_ms": 10,
        "max_queue": 16,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def make_settings(tiny_model_dir: Path) -> Callable[..., Settings]:
    """``make_settings(**overrides)``: test settings on the tiny model."""
    return lambda **overrides: _settings(tiny_model_dir, **overrides)


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    """One loaded tiny engine shared by the suite (loading is from_pretrained, as in production)."""
    engine = Engine.load(_settings(tiny_model_dir))
    yield engine
    engine.close()


# --- Waiting ----------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` (state kept by moto, which sends no notifications) until it holds;
    fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout} s: {what or 'condition'}")
        pause.wait(0.05)


def wait_for(event: threading.Event, timeout: float = 10.0, what: str = "") -> None:
    if not event.wait(timeout):
        raise AssertionError(f"not within {timeout} s: {what or 'event'}")


# --- AWS through moto -------------------------------------------------------------------------


@dataclass
class Aws:
    sqs: Any
    s3: Any
    sfn: Any
    queue_url: str
    dead_letter_queue_url: str
    state_machine_arn: str

    def start(self, job: Job) -> str:
        return str(
            self.sfn.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=job.job_id,  # moto names an unnamed execution "None"
                input=json.dumps({"job": job.model_dump(mode="json")}),
            )["executionArn"]
        )

    def wait_for_message(self, count: int = 1, timeout: float = 10.0) -> None:
        wait_until(
            lambda: self.queue_counts()[0] >= count, timeout, f"{count} messages on the queue"
        )

    def queue_counts(self, queue_url: str | None = None) -> tuple[int, int]:
        """(visible, in flight) messages on the GPU queue (or on ``queue_url``)."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=queue_url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        )

    def status(self, execution_arn: str) -> str:
        return str(self.sfn.describe_execution(executionArn=execution_arn)["status"])

    def finished(self, execution_arn: str, timeout: float = 20.0) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def ended() -> bool:
            result.update(self.sfn.describe_execution(executionArn=execution_arn))
            return result["status"] != "RUNNING"

        wait_until(ended, timeout, f"execution {execution_arn} ended")
        return result

    def take_token(self, job: Job) -> tuple[str, str]:
        """Start an execution for ``job``, take its message off the queue and return (execution
        ARN, task token): the token of a live task, to send with a body of the test's making.
        Call it while no worker polls the queue."""
        execution = self.start(job)
        self.wait_for_message()
        [message] = self.sqs.receive_message(QueueUrl=self.queue_url, WaitTimeSeconds=1)["Messages"]
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return execution, GpuJobMessage.model_validate_json(message["Body"]).task_token


@pytest.fixture
def aws() -> Iterator[Aws]:
    """moto executing the workflow's GPU state against a GPU queue with a dead-letter queue,
    through the local stack's door (``local_aws``), so the worker meets the Step Functions the
    local stack has: e.g. a heartbeat for a task whose state has no HeartbeatSeconds is accepted,
    a stopped execution's token answers TaskTimedOut."""
    with local_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        s3 = boto3.client("s3", region_name="us-east-1")
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        dlq_url = sqs.create_queue(QueueName="imagegen-gpu-jobs-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        queue_url = sqs.create_queue(
            QueueName="imagegen-gpu-jobs",
            Attributes={
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVES}
                )
            },
        )["QueueUrl"]
        s3.create_bucket(Bucket=BUCKET)
        arn = sfn.create_state_machine(
            name="gpu-step", definition=gpu_state_definition(queue_url), roleArn=ROLE_ARN
        )["stateMachineArn"]
        yield Aws(sqs, s3, sfn, queue_url, dlq_url, arn)


def make_job(
    *, images: int = 1, width: int | None = 64, height: int | None = 64, **extra: Any
) -> Job:
    """A job as "Validate Prompt" hands it to the GPU state (the deadline included)."""
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    extra.setdefault("gpu_timeout_seconds", 300)
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
    """``worker_for(engine=None, sqs=, s3=, stepfunctions=, events=, progress_clock=,
    **settings)``: a worker on the test queue and bucket (the moto clients unless others are
    given; progress events only with ``event_bus_name=...``)."""

    def build(
        engine_override: Engine | None = None,
        *,
        sqs: Any = None,
        s3: Any = None,
        stepfunctions: Any = None,
        events: Any = None,
        progress_clock: Callable[[], float] = time.monotonic,
        **overrides: Any,
    ) -> Worker:
        values: dict[str, Any] = {
            "gpu_queue_url": aws.queue_url,
            "images_bucket": BUCKET,
            "receive_wait_seconds": 1,
            "visibility_timeout_seconds": 30,
            "heartbeat_interval_seconds": 5,
            "error_backoff_seconds": 0.05,
        }
        values.update(overrides)
        return Worker(
            make_settings(**values),
            engine_override or engine,
            sqs=sqs or aws.sqs,
            s3=s3 or aws.s3,
            stepfunctions=stepfunctions or aws.sfn,
            events=events,
            progress_clock=progress_clock,
        )

    return build


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

    def called(self, name: str) -> list[dict[str, Any]]:
        """The keyword arguments of every call of ``name``, in order."""
        return [
            kwargs for call, kwargs in zip(self.calls, self.arguments, strict=True) if call == name
        ]


def client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} (test)"}}, operation)


class FakeStepFunctions:
    """Stands in for the Step Functions client where the tasks are the test's own: tokens are any
    strings; a token in ``ended`` answers TaskTimedOut, as AWS does for a stopped or timed-out
    task. Records every call."""

    def __init__(self) -> None:
        self.ended: set[str] = set()
        self.heartbeats: list[str] = []
        self.successes: dict[str, str] = {}
        self.failures: dict[str, tuple[str, str]] = {}
        self._changed = threading.Condition()

    def _answer(self, token: str, operation: str, record: Callable[[], None]) -> None:
        with self._changed:
            if token in self.ended:
                raise client_error("TaskTimedOut", operation)
            record()
            self.ended.add(token)
            self._changed.notify_all()

    def send_task_heartbeat(self, *, taskToken: str) -> dict[str, Any]:
        with self._changed:
            self.heartbeats.append(taskToken)
            self._changed.notify_all()
            if taskToken in self.ended:
                raise client_error("TaskTimedOut", "SendTaskHeartbeat")
        return {}

    def send_task_success(self, *, taskToken: str, output: str) -> dict[str, Any]:
        self._answer(
            taskToken, "SendTaskSuccess", lambda: self.successes.__setitem__(taskToken, output)
        )
        return {}

    def send_task_failure(self, *, taskToken: str, error: str, cause: str) -> dict[str, Any]:
        self._answer(
            taskToken,
            "SendTaskFailure",
            lambda: self.failures.__setitem__(taskToken, (error, cause)),
        )
        return {}

    def wait(self, condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
        """Wait until ``condition`` holds after some call; fail after ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(condition, timeout):
                raise AssertionError(f"not within {timeout} s: {what or 'condition'}")

    def wait_for_answers(self, count: int, timeout: float = 20.0) -> None:
        self.wait(
            lambda: len(self.successes) + len(self.failures) >= count,
            timeout,
            f"{count} tasks answered",
        )


def job_message(token: str, job: Job) -> str:
    """The body the workflow's GPU state sends, with a token of the test's choosing."""
    return GpuJobMessage(task_token=token, job=job).model_dump_json()
