"""The worker as a pipeline (``Worker.run``): the next batch is received while a call runs, a slow
S3 makes it receive less, every stage keeps its messages hidden, SIGTERM drains every stage, an
upload or a report that fails affects its own job only, and an image is the engine's own pixels.

SQS and S3 are moto; Step Functions is the test's stand-in (``FakeStepFunctions``: one answer per
task, a second raises TaskTimedOut). Every test checks the order of what reached AWS: no message
is deleted before its task is answered, and each task gets exactly one answer.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import EndpointConnectionError
from PIL import Image

from gpu_service.engine import Engine
from gpu_service.image_specs import ImageSpec
from gpu_service.worker import Worker
from imagegen_common.models import GenerationResult, GpuJobMessage, Job
from tests.gpu_service.conftest import (
    BUCKET,
    Aws,
    FakeStepFunctions,
    client_error,
    job_message,
    make_job,
    wait_for,
    wait_until,
)


class Timeline:
    """What reached AWS, in order: ("answer", token) and ("delete", token) entries."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self.tokens_by_handle: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, token: str) -> None:
        with self._lock:
            self.entries.append((kind, token))

    def assert_deleted_only_after_answered(self) -> None:
        answered: set[str] = set()
        for kind, token in self.entries:
            if kind == "answer":
                answered.add(token)
            else:
                assert token in answered, f"the message of {token} was deleted before its answer"


class RecordingSqs:
    """moto's SQS client; each deleted message is put on the timeline by its task token."""

    def __init__(self, client: Any, timeline: Timeline) -> None:
        self._client = client
        self._timeline = timeline

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def receive_message(self, **kwargs: Any) -> Any:
        response = self._client.receive_message(**kwargs)
        for message in response.get("Messages", []):
            token = GpuJobMessage.model_validate_json(message["Body"]).task_token
            self._timeline.tokens_by_handle[message["ReceiptHandle"]] = token
        return response

    def delete_message_batch(self, **kwargs: Any) -> Any:
        response = self._client.delete_message_batch(**kwargs)
        for entry in kwargs["Entries"]:
            self._timeline.add("delete", self._timeline.tokens_by_handle[entry["ReceiptHandle"]])
        return response


class RecordingStepFunctions(FakeStepFunctions):
    """The stand-in; each answer is put on the timeline (``fail_next`` answers fail first)."""

    def __init__(self, timeline: Timeline) -> None:
        super().__init__()
        self.timeline = timeline
        self.fail_next: dict[str, int] = {}

    def send_task_success(self, *, taskToken: str, output: str) -> dict[str, Any]:
        if self.fail_next.get(taskToken):
            self.fail_next[taskToken] -= 1
            raise client_error("ServiceUnavailable", "SendTaskSuccess")
        answer = super().send_task_success(taskToken=taskToken, output=output)
        self.timeline.add("answer", taskToken)
        return answer

    def send_task_failure(self, *, taskToken: str, error: str, cause: str) -> dict[str, Any]:
        answer = super().send_task_failure(taskToken=taskToken, error=error, cause=cause)
        self.timeline.add("answer", taskToken)
        return answer


class GatedS3:
    """moto's S3 client; put_object waits while ``open`` is clear, and fails for the keys in
    ``fail_once`` the first time."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.open = threading.Event()
        self.open.set()
        self.fail_once: set[str] = set()
        self.puts = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_object(self, **kwargs: Any) -> Any:
        wait_for(self.open, 30, "the test opens S3")
        with self._lock:
            self.puts += 1
            if kwargs["Key"] in self.fail_once:
                self.fail_once.discard(kwargs["Key"])
                raise EndpointConnectionError(endpoint_url="https://s3.invalid")
        return self._client.put_object(**kwargs)


class GatedEngine(Engine):
    """The tiny engine; a call waits while ``open`` is clear, and ``calls`` counts the calls."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner.pipeline, model_id=inner.model_id, device="cpu", dtype=inner.dtype)
        self.open = threading.Event()
        self.open.set()
        self.in_call = threading.Event()
        self.calls: list[int] = []

    def generate_images(self, specs: Sequence[ImageSpec], on_step: Any = None) -> list[Any]:
        self.calls.append(len(specs))
        self.in_call.set()
        wait_for(self.open, 30, "the test opens the engine")
        return super().generate_images(specs, on_step)


@pytest.fixture
def timeline() -> Timeline:
    return Timeline()


@pytest.fixture
def sfn(timeline: Timeline) -> RecordingStepFunctions:
    return RecordingStepFunctions(timeline)


@contextmanager
def running(worker: Worker) -> Iterator[threading.Event]:
    """``worker.run`` in a thread for the block; the event stops it (SIGTERM), and the block's
    end waits for the worker to have drained and stopped."""
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="worker")
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the worker did not stop"


def send(aws: Aws, jobs: list[Job], prefix: str = "task") -> list[str]:
    tokens = []
    for index, job in enumerate(jobs):
        token = f"{prefix}-{index}"
        aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=job_message(token, job))
        tokens.append(token)
    aws.wait_for_message(count=len(jobs))
    return tokens


def each_answered_once(sfn: FakeStepFunctions, tokens: list[str]) -> None:
    assert sorted([*sfn.successes, *sfn.failures]) == sorted(tokens)


def test_the_next_batch_is_received_while_a_call_runs(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine, sfn: RecordingStepFunctions,
    timeline: Timeline,
) -> None:  # fmt: skip
    gated = GatedEngine(engine)
    gated.open.clear()
    tokens = send(aws, [make_job() for _ in range(8)])
    worker = worker_for(
        gated, sqs=RecordingSqs(aws.sqs, timeline), stepfunctions=sfn, max_batch=2, max_messages=2
    )

    with running(worker):
        wait_for(gated.in_call, 20, "the first call")
        # While the first call is held, intake keeps receiving: the next batches are in hand.
        wait_until(lambda: aws.queue_counts()[1] >= 6, 20, "two batches received ahead")
        assert len(gated.calls) == 1
        gated.open.set()
        sfn.wait_for_answers(len(tokens), 30)

    each_answered_once(sfn, tokens)
    assert gated.calls == [2, 2, 2, 2]
    timeline.assert_deleted_only_after_answered()
    assert aws.queue_counts() == (0, 0)


def test_a_slow_s3_makes_the_worker_receive_less_and_keep_what_it_holds_hidden(
    aws: Aws, worker_for: Callable[..., Worker], sfn: RecordingStepFunctions, timeline: Timeline
) -> None:
    tokens = send(aws, [make_job() for _ in range(20)])
    s3 = GatedS3(aws.s3)
    s3.open.clear()
    worker = worker_for(
        sqs=RecordingSqs(aws.sqs, timeline),
        s3=s3,
        stepfunctions=sfn,
        max_batch=2,
        max_messages=2,
        ahead_batches=1,
        behind_batches=2,
        visibility_timeout_seconds=1,
        heartbeat_interval_seconds=0.2,
    )

    with running(worker):
        # Made but not stored: 2 batches behind stop the intake; 1 batch ahead waits.
        wait_until(lambda: aws.queue_counts()[1] >= 4, 20, "the worker's share in hand")
        in_hand = [aws.queue_counts()[1]]
        for _ in range(10):  # 2 s: twice the visibility timeout, with S3 closed
            in_hand.append(aws.queue_counts()[1])
            threading.Event().wait(0.2)
        # Bounded: what it made and cannot store, one batch ahead, one receive more.
        assert max(in_hand) <= 2 * 2 + 1 * 2 + 2, in_hand
        assert aws.queue_counts()[0] >= 20 - max(in_hand)  # the rest waits on the queue
        assert sfn.successes == {}  # none reported: none stored
        s3.open.set()
        sfn.wait_for_answers(len(tokens), 60)

    each_answered_once(sfn, tokens)
    assert s3.puts == len(tokens)  # each image put once: none reappeared while held
    timeline.assert_deleted_only_after_answered()
    assert aws.queue_counts() == (0, 0)


def test_sigterm_drains_every_stage(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine, sfn: RecordingStepFunctions,
    timeline: Timeline,
) -> None:  # fmt: skip
    tokens = send(aws, [make_job(images=2), *(make_job(width=128) for _ in range(3))])
    gated = GatedEngine(engine)
    gated.open.clear()
    worker = worker_for(gated, sqs=RecordingSqs(aws.sqs, timeline), stepfunctions=sfn, max_batch=4)

    with running(worker) as stop:
        wait_for(gated.in_call, 20, "the first call")
        stop.set()  # SIGTERM in the middle of the first call
        gated.open.set()

    # The started job (the 64x64 one, first in line) was finished, stored, reported and deleted;
    # the others were handed back, visible at once, never answered.
    assert gated.calls == [2]
    assert list(sfn.successes) == [tokens[0]]
    assert sfn.failures == {}
    timeline.assert_deleted_only_after_answered()
    assert aws.queue_counts() == (3, 0)


def test_an_upload_that_fails_for_one_image_of_a_batch_redoes_only_its_job(
    aws: Aws, worker_for: Callable[..., Worker], sfn: RecordingStepFunctions, timeline: Timeline
) -> None:
    jobs = [make_job() for _ in range(3)]
    tokens = send(aws, jobs)
    s3 = GatedS3(aws.s3)
    s3.fail_once.add(jobs[1].images[0].s3_key)
    worker = worker_for(
        sqs=RecordingSqs(aws.sqs, timeline),
        s3=s3,
        stepfunctions=sfn,
        max_batch=4,
        visibility_timeout_seconds=1,
        heartbeat_interval_seconds=0.3,
    )

    with running(worker):
        sfn.wait_for_answers(len(tokens), 30)  # the failed one after its message reappeared

    each_answered_once(sfn, tokens)
    assert s3.puts == 4  # three images, one of them twice
    assert all(GenerationResult.model_validate_json(out).images for out in sfn.successes.values())
    timeline.assert_deleted_only_after_answered()
    assert [token for kind, token in timeline.entries if kind == "delete"].count(tokens[1]) == 1
    assert aws.queue_counts() == (0, 0)


def test_a_report_that_fails_transiently_leaves_the_job_to_be_redone_and_answered_once(
    aws: Aws, worker_for: Callable[..., Worker], sfn: RecordingStepFunctions, timeline: Timeline
) -> None:
    tokens = send(aws, [make_job() for _ in range(3)])
    sfn.fail_next[tokens[2]] = 1  # Step Functions unavailable for one answer
    worker = worker_for(
        sqs=RecordingSqs(aws.sqs, timeline),
        stepfunctions=sfn,
        max_batch=4,
        visibility_timeout_seconds=1,
        heartbeat_interval_seconds=0.3,
    )

    with running(worker):
        sfn.wait_for_answers(len(tokens), 30)

    each_answered_once(sfn, tokens)
    assert sfn.fail_next[tokens[2]] == 0  # it did fail once
    timeline.assert_deleted_only_after_answered()
    assert aws.queue_counts() == (0, 0)


def test_an_image_is_the_engines_own_pixels(
    aws: Aws, worker_for: Callable[..., Worker], engine: Engine
) -> None:
    """The PNG a job gets decodes to exactly the pixels the engine makes for the same seeds and
    batch: encoding off the engine's thread changes nothing."""
    job = make_job(images=2)
    execution = aws.start(job)
    aws.wait_for_message()

    assert worker_for(max_batch=4).poll_once() == 1

    assert aws.finished(execution)["status"] == "SUCCEEDED"
    specs = [
        ImageSpec(
            prompt=job.request.prompt,
            seed=slot.seed,
            width=64,
            height=64,
            steps=2,
            guidance=0.0,
        )
        for slot in job.images
    ]
    for slot, expected in zip(job.images, engine.generate_images(specs), strict=True):
        body = aws.s3.get_object(Bucket=BUCKET, Key=slot.s3_key)["Body"].read()
        stored = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        assert np.array_equal(stored, np.asarray(expected.convert("RGB")))
