"""Progress of GPU jobs: the throttle, a job's percent and ETA, the background publisher, and the
worker putting "Image Generation Progress" events on a bus (moto, through ``local_aws``) for a
batch of several jobs on the tiny model. Faults: an EventBridge that fails, a queue that fills."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from gpu_service.image_specs import DenoisingStep
from gpu_service.progress import (
    CallShare,
    JobProgress,
    ProgressPublisher,
    ProgressReporter,
    StepThrottle,
)
from gpu_service.worker import Worker
from imagegen_common.models import (
    IMAGE_GENERATION_PROGRESS,
    ImageGenerationProgressDetail,
    ImageOutcome,
    Stage,
)
from tests.gpu_service.conftest import BUCKET, Aws, make_job, wait_until

BUS = "imagegen-test-bus"
SOURCE = "imagegen.test"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- Throttle ---------------------------------------------------------------------------------


def test_many_steps_within_an_interval_make_one_event_and_the_last_step_always_passes() -> None:
    clock = FakeClock()
    throttle = StepThrottle(1.0, clock)
    admitted = []
    for _step in range(1, 50):  # 49 steps within one second
        clock.now += 0.02
        admitted.append(throttle.admit(last=False))
    assert admitted.count(True) == 1 and admitted[0] is True
    assert throttle.admit(last=True)  # step 50 of 50, 0.02 s after the last one


def test_the_throttle_lets_one_step_through_per_interval() -> None:
    clock = FakeClock()
    throttle = StepThrottle(1.0, clock)
    throttle.sent()  # the "generating" stage went out
    passed_at = []
    for _ in range(100):  # 0.25 s a step, for 25 s
        clock.now += 0.25
        if throttle.admit():
            passed_at.append(clock.now)
    gaps = [later - earlier for earlier, later in itertools.pairwise(passed_at)]
    assert len(passed_at) == 25
    assert all(gap >= 1.0 for gap in gaps)


# --- One job's progress -----------------------------------------------------------------------


def test_percent_covers_the_whole_job_and_the_eta_the_calls_still_to_come() -> None:
    job = JobProgress("job-1", "apikey:test", images=4, steps=10, throttle=StepThrottle(1.0))
    assert job.started().percent == 0.0
    # The job's first 2 images in one call, the other 2 in a later call of 10 steps.
    job.steps_after_this_call = 10
    halfway = job.at_step(DenoisingStep(5, 10), images_in_call=2, seconds_per_step=0.5)
    assert (halfway.step, halfway.steps, halfway.unit) == (5, 10, "steps")
    assert halfway.percent == 25.0  # 2 images x 5 steps of 4 x 10
    assert halfway.eta_seconds == 7.5  # (5 left in this call + 10 later) x 0.5 s
    job.image_finished()
    job.image_finished()
    job.steps_after_this_call = 0
    later = job.at_step(DenoisingStep(5, 10), images_in_call=2, seconds_per_step=0.5)
    assert later.percent == 75.0  # the stored images count in full
    assert later.eta_seconds == 2.5
    job.image_finished()
    done = job.image_finished()
    assert (done.percent, done.eta_seconds) == (100.0, 0.0)


# --- Publisher --------------------------------------------------------------------------------


class RecordingEvents:
    """An EventBridge client that records PutEvents calls; ``fail`` makes each call raise;
    ``gate`` (when set) holds each call until it is released."""

    def __init__(self, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.fail = fail
        self.gate = gate
        self.entered = threading.Event()  # a call has begun
        self.calls: list[list[dict[str, Any]]] = []

    def put_events(self, *, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise ConnectionError("EventBridge is unreachable (test)")
        self.calls.append(Entries)
        return {"FailedEntryCount": 0, "Entries": [{"EventId": "x"} for _ in Entries]}


def _detail(execution_id: str, step: int) -> ImageGenerationProgressDetail:
    reporter_job = JobProgress(execution_id, "apikey:test", 1, 30, StepThrottle(0))
    return ImageGenerationProgressDetail(
        execution_id=execution_id,
        owner="apikey:test",
        stage=Stage.GENERATING,
        progress=reporter_job.at_step(DenoisingStep(step, 30), 1, None),
        at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_the_publisher_puts_up_to_ten_entries_per_call_in_order() -> None:
    gate = threading.Event()
    events = RecordingEvents(gate=gate)
    publisher = ProgressPublisher(events, bus_name=BUS, source=SOURCE)
    for step in range(1, 26):
        publisher.publish(_detail("job-1", step))
    gate.set()
    assert publisher.flush(10)
    publisher.close()
    entries = [entry for call in events.calls for entry in call]
    assert all(len(call) <= 10 for call in events.calls)
    assert [json.loads(e["Detail"])["progress"]["step"] for e in entries] == list(range(1, 26))
    assert {(e["EventBusName"], e["Source"], e["DetailType"]) for e in entries} == {
        (BUS, SOURCE, IMAGE_GENERATION_PROGRESS)
    }
    assert (publisher.sent, publisher.failed, publisher.dropped) == (25, 0, 0)


def test_a_failing_eventbridge_is_logged_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    publisher = ProgressPublisher(RecordingEvents(fail=True), bus_name=BUS, source=SOURCE)
    for step in range(1, 4):
        publisher.publish(_detail("job-1", step))
    assert publisher.flush(10)
    publisher.close()
    assert (publisher.sent, publisher.failed) == (0, 3)
    assert "progress events on imagegen-test-bus failed" in caplog.text


def test_a_full_queue_drops_events_without_blocking() -> None:
    gate = threading.Event()  # EventBridge hangs: nothing more leaves the queue
    events = RecordingEvents(gate=gate)
    publisher = ProgressPublisher(events, bus_name=BUS, source=SOURCE, max_pending=5)
    publisher.publish(_detail("job-1", 1))
    assert events.entered.wait(10)  # the thread holds event 1 in a hung PutEvents
    for step in range(2, 31):
        publisher.publish(_detail("job-1", step))  # returns at once even with the queue full
    assert publisher.dropped == 30 - 1 - 5
    gate.set()
    assert publisher.flush(10)
    publisher.close()
    assert (publisher.sent, publisher.dropped) == (6, 24)


def test_the_reporter_survives_a_publisher_that_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Exploding(ProgressPublisher):
        def publish(self, detail: ImageGenerationProgressDetail) -> None:
            raise RuntimeError("cannot publish (test)")

    reporter = ProgressReporter(
        Exploding(RecordingEvents(), bus_name=BUS, source=SOURCE), interval_seconds=0
    )
    assert reporter.job_started("job-1", "apikey:test", images=1, steps=2) is None
    job = JobProgress("job-1", "apikey:test", 1, 2, StepThrottle(0))
    reporter.observer([CallShare(job, 1)])(DenoisingStep(1, 2))
    reporter.image_finished(
        job, ImageOutcome(index=0, seed=1, bucket=BUCKET, s3_key="images/job-1/0.png")
    )
    assert [record.getMessage() for record in caplog.records] == [
        "progress of job job-1 cannot be reported"
    ] * 3


# --- The worker on the tiny model, against moto ----------------------------------------------


@dataclass
class Bus:
    """Our bus in moto with a rule sending its progress events to a queue the test reads."""

    aws: Aws
    events: Any
    queue_url: str

    def details(self, expected: int, timeout: float = 15.0) -> list[ImageGenerationProgressDetail]:
        """The progress details delivered, once at least ``expected`` have come, in order."""
        seen: list[dict[str, Any]] = []

        def enough() -> bool:
            answer = self.aws.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            for message in answer.get("Messages", []):
                seen.append(json.loads(message["Body"]))
                self.aws.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
            return len(seen) >= expected

        wait_until(enough, timeout, f"{expected} progress events")
        assert {(e["source"], e["detail-type"]) for e in seen} == {
            (SOURCE, IMAGE_GENERATION_PROGRESS)
        }
        return [ImageGenerationProgressDetail.model_validate(e["detail"]) for e in seen]


@pytest.fixture
def bus(aws: Aws) -> Bus:
    import boto3

    events = boto3.client("events", region_name="us-east-1")
    events.create_event_bus(Name=BUS)
    queue_url = aws.sqs.create_queue(QueueName="progress-events")["QueueUrl"]
    queue_arn = aws.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    events.put_rule(
        Name="progress",
        EventBusName=BUS,
        EventPattern=json.dumps({"source": [SOURCE], "detail-type": [IMAGE_GENERATION_PROGRESS]}),
    )
    events.put_targets(
        Rule="progress", EventBusName=BUS, Targets=[{"Id": "queue", "Arn": queue_arn}]
    )
    return Bus(aws, events, queue_url)


def _by_job(
    details: list[ImageGenerationProgressDetail],
) -> dict[str, list[ImageGenerationProgressDetail]]:
    jobs: dict[str, list[ImageGenerationProgressDetail]] = {}
    for detail in details:
        jobs.setdefault(detail.execution_id, []).append(detail)
    for events in jobs.values():
        events.sort(key=lambda detail: detail.at)
    return jobs


def test_the_worker_reports_generating_steps_and_storing_for_each_job_of_a_batch(
    aws: Aws, bus: Bus, worker_for: Callable[..., Worker]
) -> None:
    # 3 jobs, 5 images, max_batch 4: jobs of one and two calls; 6 steps a call.
    jobs = [make_job(images=2), make_job(images=1), make_job(images=2)]
    executions = [aws.start(job) for job in jobs]
    aws.wait_for_message(len(jobs))
    worker = worker_for(events=bus.events, event_bus_name=BUS, event_source=SOURCE, default_steps=6)
    while sum(1 for e in executions if aws.status(e) == "RUNNING") and worker.poll_once():
        pass
    worker.close()
    for execution in executions:
        assert aws.finished(execution)["status"] == "SUCCEEDED"
    assert worker.progress is not None and worker.progress.publisher.failed == 0

    published = worker.progress.publisher.sent
    by_job = _by_job(bus.details(published))
    assert set(by_job) == {job.job_id for job in jobs}
    for job in jobs:
        events = by_job[job.job_id]
        assert all(e.owner == job.owner and e.backend == "gpu" for e in events)
        first, stored = events[0], [e for e in events if e.stage == Stage.STORING]
        assert first.stage == Stage.GENERATING
        assert first.progress is not None and first.progress.step == 0
        assert any(e.stage == Stage.GENERATING for e in events[1:])  # steps
        assert events[-1].stage == Stage.STORING and len(stored) == len(job.images)
        for earlier, later in itertools.pairwise(events):
            if earlier.stage == Stage.GENERATING and later.stage == Stage.STORING:
                assert earlier.progress is not None  # the last step of a call is always sent
                assert (earlier.progress.step, earlier.progress.steps) == (6, 6)
        percents = [e.progress.percent for e in events if e.progress is not None]
        assert percents == sorted(percents) and percents[-1] == 100.0
        assert [e.stage for e in stored] == [Stage.STORING] * len(job.images)
        outcomes = sorted((e.image for e in stored if e.image), key=lambda o: o.index)
        assert [(o.index, o.seed, o.bucket, o.s3_key, o.width, o.height) for o in outcomes] == [
            (slot.index, slot.seed, BUCKET, slot.s3_key, 64, 64) for slot in job.images
        ]
        assert all(o.cost is not None and o.cost.usd > 0 for o in outcomes)


def test_a_batch_of_eight_jobs_does_not_flood_the_bus(
    aws: Aws, worker_for: Callable[..., Worker]
) -> None:
    """With the clock standing still (a whole call within one interval), each job of a batch of
    8 gets its stage events and the last step of the call: not 8 x 10 step events."""
    events = RecordingEvents()
    jobs = [make_job() for _ in range(8)]
    executions = [aws.start(job) for job in jobs]
    aws.wait_for_message(len(jobs))
    worker = worker_for(
        events=events,
        event_bus_name=BUS,
        event_source=SOURCE,
        default_steps=10,
        max_batch=8,
        progress_clock=FakeClock(),
    )
    while sum(1 for e in executions if aws.status(e) == "RUNNING") and worker.poll_once():
        pass
    worker.close()
    details = [json.loads(entry["Detail"]) for call in events.calls for entry in call]
    per_job = {job.job_id: [d for d in details if d["execution_id"] == job.job_id] for job in jobs}
    for job_details in per_job.values():
        assert [(d["stage"], d["progress"]["step"]) for d in job_details] == [
            ("generating", 0),
            ("generating", 10),
            ("storing", 10),
        ]


def test_a_failing_eventbridge_does_not_fail_the_job(
    aws: Aws, worker_for: Callable[..., Worker]
) -> None:
    events = RecordingEvents(fail=True)
    job = make_job(images=2)
    execution = aws.start(job)
    aws.wait_for_message()
    worker = worker_for(events=events, event_bus_name=BUS, default_steps=4)
    assert worker.poll_once() == 1
    worker.close()
    assert aws.finished(execution)["status"] == "SUCCEEDED"
    assert worker.progress is not None and worker.progress.publisher.failed >= 4


def test_progress_reporting_can_be_turned_off(aws: Aws, worker_for: Callable[..., Worker]) -> None:
    events = RecordingEvents()
    execution = aws.start(make_job())
    aws.wait_for_message()
    worker = worker_for(events=events, event_bus_name=BUS, progress_reporting=False)
    worker.poll_once()
    worker.close()
    assert aws.finished(execution)["status"] == "SUCCEEDED"
    assert worker.progress is None and events.calls == []
