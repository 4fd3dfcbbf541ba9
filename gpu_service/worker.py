"""The queue face: the workflow's GPU branch.

The state machine's "Generate on GPU" state sends a ``GpuJobMessage`` to the GPU job queue with
``sqs:sendMessage.waitForTaskToken`` and waits, with one deadline for queue wait plus generation
(the job's ``gpu_timeout_seconds``) and no ``HeartbeatSeconds``: time spent waiting in the queue
(scaling from zero takes minutes) must not read as a dead worker. This worker long-polls that
queue, generates the images of the jobs in hand in batches, writes each PNG to
``s3://bucket/slot.s3_key`` and answers ``SendTaskSuccess(GenerationResult)``; a bad job gets
``SendTaskFailure(INVALID_JOB)``.

Liveness comes from SQS, not from Step Functions:
- a received message is invisible to other workers for ``VISIBILITY_TIMEOUT_SECONDS``; while the
  worker holds it, it extends that visibility every ``HEARTBEAT_INTERVAL_SECONDS`` (at most a third
  of the timeout, so one failed extension does not expose the message);
- if the worker dies, the extensions stop, the message reappears after the visibility timeout and
  another worker redoes the job (S3 writes are idempotent); after the queue's ``maxReceiveCount``
  receives the redrive policy moves it to the dead-letter queue, whose function fails the task
  with ``WORKER_LOST``;
- the worker still sends ``SendTaskHeartbeat`` (on receipt, with every extension and again just
  before a batch that a job has waited for), only to learn that the task has ended: stopped or
  timed out, Step Functions answers ``TaskTimedOut``, ``InvalidToken`` or ``TaskDoesNotExist``; the
  job is then dropped before more GPU time is spent on it, and its message is deleted.

What keeps jobs from being lost:
- a message is deleted only once its task has been reported (or the task no longer exists);
- on SIGTERM it finishes the batch in hand (and the jobs it has started), hands back messages it
  received but did not start (visibility 0) and stops.

Progress: with ``EVENT_BUS_NAME`` set (and ``PROGRESS_REPORTING`` not false) the worker puts
"Image Generation Progress" events on that bus for each job (``gpu_service.progress``): stage
"generating" when it accepts the job, then denoising steps at most once per
``PROGRESS_INTERVAL_SECONDS`` per job (and the last step of each pipeline call), then "storing"
with each image's outcome. The events leave from a background thread; publishing never fails or
holds up a job.

Nothing a message contains can stop the worker: each message is parsed and handled on its own,
with pydantic's JSON parser (bounded nesting, bounded numbers, no recursion in Python). A message
that is not a ``GpuJobMessage`` and yields no ``task_token`` cannot be answered: it is logged
(truncated) and left on the queue, so the redrive policy moves it to the dead-letter queue where it
can be inspected (deleting it would destroy the only evidence). One with a token but a bad job
fails that task with ``INVALID_JOB`` and is deleted. An exception in one round of the poll loop or
of the heartbeat thread is logged and the loop goes on.

    python -m gpu_service.worker            # GPU_QUEUE_URL, IMAGES_BUCKET, MODEL_ID, ...
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ParamValidationError
from pydantic import BaseModel, Field, ValidationError

from gpu_service.cli import settings_from_command_line
from gpu_service.engine import Engine, ImageSpec, StepObserver, load_ready_engine, plan_batches
from gpu_service.progress import CallShare, JobProgress, ProgressPublisher, ProgressReporter
from gpu_service.settings import Settings
from imagegen_common.models import (
    Cost,
    ErrorCode,
    ErrorInfo,
    GenerationResult,
    GpuJobMessage,
    ImageOutcome,
    ImageSlot,
    Job,
)

logger = logging.getLogger(__name__)

# Answers meaning the task is gone (finished, stopped or timed out): drop the job.
_TASK_GONE = {"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"}
_CAUSE_LIMIT = 32_768  # SendTaskFailure's limit on the cause
MAX_BODY_CHARACTERS = 1_048_576
"""SQS's own limit on a message body (1 MiB): anything longer did not come from the queue."""
_S3_KEY_BYTES = 1024
_LOGGED_CHARACTERS = 160  # of a message body or a problem, in a log line
_LISTED_PROBLEMS = 10  # validation problems named in a cause
_MAX_ERROR_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class ParsedBody:
    """What could be read from a message body: the job message, or its token and what is wrong.

    ``token`` is set whenever one could be extracted safely; ``problem`` whenever the body is not
    a valid ``GpuJobMessage``.
    """

    envelope: GpuJobMessage | None
    token: str | None
    problem: str | None


class _TaskTokenOnly(BaseModel):
    """Reads only the token from a body whose job is bad (other fields are ignored)."""

    task_token: str = Field(min_length=1)


def parse_body(body: object) -> ParsedBody:
    """Parse a message body without raising, whatever it holds (any size, depth, type, encoding).

    pydantic's JSON parser (jiter, in Rust) is used rather than ``json.loads``: nesting deeper
    than its limit (200) and integers longer than Python's digit limit are reported as invalid
    JSON instead of raising ``RecursionError`` or ``ValueError`` in the middle of the loop.
    """
    if not isinstance(body, str | bytes):
        return ParsedBody(None, None, f"the body is a {type(body).__name__}, not text")
    if len(body) > MAX_BODY_CHARACTERS:
        return ParsedBody(None, None, f"the body is longer than {MAX_BODY_CHARACTERS} characters")
    try:
        envelope = GpuJobMessage.model_validate_json(body)
    except ValidationError as error:
        problem = _summarise(error)
    except (ValueError, RecursionError) as error:  # not expected from pydantic; never fatal
        return ParsedBody(None, None, f"unreadable body: {type(error).__name__}")
    else:
        if not envelope.task_token:
            return ParsedBody(None, None, "invalid GPU job message: task_token is empty")
        return ParsedBody(envelope, envelope.task_token, None)
    try:
        token: str | None = _TaskTokenOnly.model_validate_json(body).task_token
    except (ValueError, RecursionError):  # ValidationError is a ValueError
        token = None
    return ParsedBody(None, token, problem)


def _summarise(error: ValidationError) -> str:
    problems = error.errors(include_url=False, include_input=False)
    named = [
        f"{'.'.join(_short(str(part), 60) for part in item['loc']) or 'body'}: "
        f"{_short(item['msg'], 200)}"
        for item in problems[:_LISTED_PROBLEMS]
    ]
    more = len(problems) - len(named)
    return "invalid GPU job message: " + "; ".join(named) + (f"; and {more} more" if more else "")


def _short(text: str, limit: int = _LOGGED_CHARACTERS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _preview(body: object) -> str:
    """A log-safe glimpse of a body: its start, escaped, and its length when cut."""
    if not isinstance(body, str | bytes):
        return f"<{type(body).__name__}>"
    shown = repr(body[:_LOGGED_CHARACTERS])
    return shown if len(body) <= _LOGGED_CHARACTERS else f"{shown}... ({len(body)} characters)"


def _client_error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


@dataclass
class _Received:
    message: dict[str, Any]
    parsed: ParsedBody

    @property
    def message_id(self) -> str:
        return _short(str(self.message.get("MessageId", "?")), 80)

    @property
    def receive_count(self) -> str:
        attributes = self.message.get("Attributes") or {}
        return str(attributes.get("ApproximateReceiveCount", "?"))


@dataclass
class _JobInHand:
    message_id: str
    receipt_handle: str
    token: str
    job: Job
    bucket: str
    checked_at: float  # time.monotonic() of the last heartbeat that found the task alive
    outcomes: dict[int, ImageOutcome] = field(default_factory=dict)
    failure: tuple[ErrorCode, str] | None = None
    retry: bool = False  # leave the message to reappear and be redone
    gone: bool = False  # the task has ended: drop the job, delete the message
    started: bool = False  # some of its images went into a pipeline call
    done: bool = False  # reported, dropped or handed back: nothing more to do
    progress: JobProgress | None = None  # None: its progress is not reported

    @property
    def live(self) -> bool:
        return not (self.done or self.gone or self.retry or self.failure is not None)


@dataclass(frozen=True)
class _Item:
    job: _JobInHand
    slot: ImageSlot
    spec: ImageSpec


def gpu_image_cost(seconds: float, price_per_hour_usd: float, images_in_call: int) -> Cost:
    """One image's share of a pipeline call: the call's measured seconds at the GPU's hourly
    price, split evenly among the images the call made (they share the batch)."""
    usd = seconds * price_per_hour_usd / 3600 / images_in_call
    return Cost(
        usd=round(usd, 8),
        basis=f"GPU {seconds:.3f} s x ${price_per_hour_usd:g}/GPU-hour / {images_in_call} "
        "images in the call",
    )


class Worker:
    """Consumes the GPU job queue with one engine. ``run(stop)`` until ``stop`` is set.

    ``clock`` times the pipeline calls whose seconds the images' costs come from (tests give a
    fake one); ``progress_clock`` paces and times the progress events. ``events`` (an
    EventBridge client, made once here when not given) is used only when progress is reported.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        sqs: Any | None = None,
        s3: Any | None = None,
        stepfunctions: Any | None = None,
        events: Any | None = None,
        clock: Callable[[], float] = time.perf_counter,
        progress_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.gpu_queue_url:
            raise ValueError("GPU_QUEUE_URL must be set for the worker")
        self.settings = settings
        self.queue_url: str = settings.gpu_queue_url
        self.engine = engine
        self._clock = clock
        config = Config(retries={"mode": "standard", "max_attempts": 5})
        self._sqs = sqs or boto3.client("sqs", config=config)
        self._s3 = s3 or boto3.client("s3", config=config)
        self._sfn = stepfunctions or boto3.client("stepfunctions", config=config)
        self.progress: ProgressReporter | None = None
        if settings.reports_progress:
            assert settings.event_bus_name is not None  # reports_progress says so
            # Few, quick tries: a late progress event is worth little, and the queue is bounded.
            events_config = Config(
                retries={"mode": "standard", "max_attempts": 2}, connect_timeout=2, read_timeout=5
            )
            self.progress = ProgressReporter(
                ProgressPublisher(
                    events or boto3.client("events", config=events_config),
                    bus_name=settings.event_bus_name,
                    source=settings.event_source,
                ),
                interval_seconds=settings.progress_interval_seconds,
                clock=progress_clock,
            )

    # --- Loop ---------------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Send the progress events still queued (for up to ``timeout`` s) and stop sending."""
        if self.progress is not None:
            self.progress.close(timeout)

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set. A failed round is logged and retried after a pause that
        doubles with each failure in a row (up to 30 s); nothing ends the loop but ``stop``.
        Then the progress events still queued are sent (``close``)."""
        try:
            self._poll_until(stop)
        finally:
            self.close()

    def _poll_until(self, stop: threading.Event) -> None:
        logger.info("worker polling %s", self.queue_url)
        liveness = Path(self.settings.liveness_file) if self.settings.liveness_file else None
        if liveness is not None:
            self._touch(liveness)  # ready: the model is loaded and polling begins
        failures_in_a_row = 0
        while not stop.is_set():
            try:
                self.poll_once(stop)
                failures_in_a_row = 0
            except Exception:
                failures_in_a_row += 1
                pause = min(
                    self.settings.error_backoff_seconds * 2 ** min(failures_in_a_row - 1, 10),
                    _MAX_ERROR_BACKOFF_SECONDS,
                )
                logger.exception(
                    "poll round failed (%d in a row); polling again in %.1f s",
                    failures_in_a_row,
                    pause,
                )
                stop.wait(pause)
            if liveness is not None:
                self._touch(liveness)
        logger.info("worker stopped")

    @staticmethod
    def _touch(liveness: Path) -> None:
        try:
            liveness.touch()
        except OSError:
            logger.exception("could not touch the liveness file %s", liveness)

    def poll_once(self, stop: threading.Event | None = None) -> int:
        """Receive one round of messages and do their jobs; returns how many messages came."""
        received = self._receive(self.settings.receive_wait_seconds)
        if received and self._images_in(received) < self.settings.max_batch:
            received += self._receive(0)  # top up the batch with whatever else is waiting
        if not received:
            return 0
        if stop is not None and stop.is_set():
            self._release([item.message.get("ReceiptHandle") for item in received])
            return len(received)
        jobs: list[_JobInHand] = []
        for item in received:
            try:
                job = self._accept(item)
            except Exception:
                # Whatever went wrong stays with this message: it reappears, and after
                # maxReceiveCount receives the queue moves it to the dead-letter queue.
                logger.exception(
                    "message %s could not be handled; left on the queue", item.message_id
                )
                continue
            if job is not None:
                jobs.append(job)
        if jobs:
            self._work(jobs, stop)
        return len(received)

    def _receive(self, wait_seconds: int) -> list[_Received]:
        response = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.settings.max_messages,
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=self.settings.visibility_timeout_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return [
            _Received(message, parse_body(message.get("Body")))
            for message in response.get("Messages", [])
        ]

    @staticmethod
    def _images_in(received: Sequence[_Received]) -> int:
        return sum(
            len(item.parsed.envelope.job.images)
            for item in received
            if item.parsed.envelope is not None
        )

    def _release(self, receipt_handles: Sequence[object]) -> None:
        """Make messages we will not work on visible again at once (shutdown)."""
        for receipt_handle in receipt_handles:
            self._change_visibility(receipt_handle, 0)
        logger.info("stopping: released %d unstarted messages", len(receipt_handles))

    def _change_visibility(self, receipt_handle: object, seconds: int) -> None:
        try:
            self._sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
            )
        except Exception:
            logger.exception("changing a message's visibility to %d s failed", seconds)

    # --- Accept -------------------------------------------------------------------------------
    def _accept(self, received: _Received) -> _JobInHand | None:
        parsed, message = received.parsed, received.message
        receipt_handle = str(message["ReceiptHandle"])
        if parsed.envelope is None:
            if parsed.token is None:
                logger.error(
                    "message %s (receive %s) is not a GPU job and has no task_token: left for "
                    "the dead-letter queue. %s. Body: %s",
                    received.message_id,
                    received.receive_count,
                    _short(parsed.problem or ""),
                    _preview(message.get("Body")),
                )
                return None
            logger.warning(
                "message %s: %s", received.message_id, _short(parsed.problem or "invalid job")
            )
            self._reject(parsed.token, receipt_handle, parsed.problem or "invalid GPU job message")
            return None
        job = parsed.envelope.job
        problem = self._problem_with(job)
        if problem is not None:
            logger.warning("job %s is invalid: %s", _short(job.job_id, 80), problem)
            self._reject(parsed.envelope.task_token, receipt_handle, problem)
            return None
        in_hand = _JobInHand(
            message_id=received.message_id,
            receipt_handle=receipt_handle,
            token=parsed.envelope.task_token,
            job=job,
            bucket=job.bucket or self.settings.images_bucket or "",
            checked_at=time.monotonic(),
        )
        # A heartbeat at once: a job whose task has ended (stopped, timed out) shows up now.
        if not self._heartbeat(in_hand):
            self._delete(in_hand.receipt_handle)
            return None
        logger.info(
            "job %s accepted: %d images %dx%d (receive %s)",
            job.job_id,
            len(job.images),
            job.width,
            job.height,
            received.receive_count,
        )
        if self.progress is not None:
            in_hand.progress = self.progress.job_started(
                job.job_id, job.owner, images=len(job.images), steps=self.settings.default_steps
            )
        return in_hand

    def _reject(self, token: str, receipt_handle: str, problem: str) -> None:
        """Fail the task with INVALID_JOB; delete the message once that is reported."""
        if self._fail(token, ErrorCode.INVALID_JOB, problem):
            self._delete(receipt_handle)

    def _problem_with(self, job: Job) -> str | None:
        if job.width is None or job.height is None:
            return "job.width and job.height must be set"
        for name, value in (("width", job.width), ("height", job.height)):
            if not 64 <= value <= 2048 or value % 8:
                return f"job.{name} must be a multiple of 8 from 64 to 2048, got {value}"
        if job.width * job.height > self.settings.max_pixels:
            return f"job.width x job.height exceeds {self.settings.max_pixels} pixels"
        if not job.images:
            return "job.images is empty"
        if len({slot.index for slot in job.images}) != len(job.images):
            return "job.images has repeated indexes"
        for slot in job.images:
            if not 1 <= len(slot.s3_key.encode("utf-8", "surrogatepass")) <= _S3_KEY_BYTES:
                return f"job.images[{slot.index}].s3_key must be 1 to {_S3_KEY_BYTES} bytes"
        if not (job.bucket or self.settings.images_bucket):
            return "job.bucket is null and the worker has no IMAGES_BUCKET"
        return None

    # --- Work ---------------------------------------------------------------------------------
    def _work(self, jobs: list[_JobInHand], stop: threading.Event | None = None) -> None:
        items = [
            _Item(job, slot, self._spec(job.job, slot)) for job in jobs for slot in job.job.images
        ]
        stop_heartbeat = threading.Event()
        heartbeat = threading.Thread(
            target=self._keep_alive, args=(jobs, stop_heartbeat), name="heartbeat", daemon=True
        )
        heartbeat.start()
        try:
            previous_batch_started: float | None = None
            batches = plan_batches(items, lambda item: item.spec.batch_key, self.settings.max_batch)
            for position, batch in enumerate(batches):
                if stop is not None and stop.is_set() and not any(i.job.started for i in batch):
                    continue  # stopping: only jobs already started are finished
                if previous_batch_started is not None:
                    self._check_tasks_before(batch, previous_batch_started)
                previous_batch_started = time.monotonic()
                _plan_progress(batches, position)
                self._run_batch(batch)
                for job in {id(item.job): item.job for item in batch}.values():
                    if self._finished(job):
                        self._report_safely(job)
        finally:
            stop_heartbeat.set()
            heartbeat.join()
        unstarted = [job for job in jobs if not job.done and job.live and not job.started]
        if unstarted:  # only when stopping: every batch runs otherwise
            self._release([job.receipt_handle for job in unstarted])
            for job in unstarted:
                job.done = True
        for job in jobs:
            if not job.done:  # e.g. a failure that left some of its images unmade
                self._report_safely(job)

    def _check_tasks_before(self, batch: list[_Item], previous_batch_started: float) -> None:
        """Heartbeat the jobs of ``batch`` that waited through an earlier batch: a task that
        ended meanwhile (stopped, timed out) is dropped before the GPU works on it."""
        for job in {id(item.job): item.job for item in batch}.values():
            if job.live and job.checked_at < previous_batch_started and not self._heartbeat(job):
                job.gone = True

    def _spec(self, job: Job, slot: ImageSlot) -> ImageSpec:
        assert job.width is not None and job.height is not None  # checked in _problem_with
        return ImageSpec(
            prompt=job.request.prompt,
            negative_prompt=job.request.negative_prompt,
            seed=slot.seed,
            width=job.width,
            height=job.height,
            steps=self.settings.default_steps,
            guidance=self.settings.default_guidance,
        )

    def _run_batch(self, batch: list[_Item]) -> None:
        live = [item for item in batch if item.job.live]
        if not live:
            return
        for item in live:
            item.job.started = True
        for item, png, cost in self._generate(live):
            self._store(item, png, cost)

    def _generate(self, items: list[_Item]) -> list[tuple[_Item, bytes, Cost]]:
        """One pipeline call for ``items``, each image with its share of the call's measured
        seconds. If it fails and several jobs share it, each job is tried alone, so one job
        that breaks the pipeline does not fail the others (the failed call is charged to none)."""
        try:
            on_step = self._step_observer(items)
            started = self._clock()
            if on_step is None:
                pngs = self.engine.generate([i.spec for i in items])
            else:
                pngs = self.engine.generate([i.spec for i in items], on_step=on_step)
            seconds = self._clock() - started
            # The local stack reads this line for its engine-versus-orchestration figures.
            logger.info("engine: %d images in %.3f s", len(items), seconds)
            cost = gpu_image_cost(seconds, self.settings.gpu_price_per_hour_usd, len(items))
            return [(item, png, cost) for item, png in zip(items, pngs, strict=True)]
        except Exception as error:
            jobs = {id(item.job): item.job for item in items}
            if len(jobs) > 1:
                logger.exception(
                    "batch of %d images of %d jobs failed; trying each job alone",
                    len(items),
                    len(jobs),
                )
                return [
                    made
                    for key in jobs
                    for made in self._generate([item for item in items if id(item.job) == key])
                ]
            job = items[0].job
            logger.exception("job %s: %d images failed", job.job.job_id, len(items))
            job.failure = (ErrorCode.MODEL_ERROR, f"{type(error).__name__}: {error}")
            for item in items:
                self._image_failed(item, *job.failure)
            return []

    def _step_observer(self, items: list[_Item]) -> StepObserver | None:
        """What reports the denoising steps of the call making ``items``; None when progress
        is not reported."""
        if self.progress is None:
            return None
        shares: dict[int, CallShare] = {}
        for item in items:
            progress = item.job.progress
            if progress is not None:
                share = shares.get(id(progress))
                shares[id(progress)] = CallShare(
                    progress, (share.images_in_call if share else 0) + 1
                )
        return self.progress.observer(list(shares.values())) if shares else None

    def _image_finished(self, item: _Item, outcome: ImageOutcome) -> None:
        if self.progress is not None and item.job.progress is not None:
            self.progress.image_finished(item.job.progress, outcome)

    def _image_failed(self, item: _Item, code: ErrorCode, message: str) -> None:
        self._image_finished(
            item,
            ImageOutcome(
                index=item.slot.index,
                seed=item.slot.seed,
                error=ErrorInfo(code=code, message=_short(message, 1000)),
            ),
        )

    def _store(self, item: _Item, png: bytes, cost: Cost) -> None:
        job = item.job
        try:
            self._s3.put_object(
                Bucket=job.bucket, Key=item.slot.s3_key, Body=png, ContentType="image/png"
            )
        except ParamValidationError as error:  # a bucket name S3 cannot have: the job's fault
            job.failure = (ErrorCode.INVALID_JOB, f"cannot write s3://{job.bucket}: {error}")
            self._image_failed(item, *job.failure)
            return
        except Exception:
            # Transient or permissions: leave the message to reappear and be redone.
            logger.exception("writing s3://%s/%s failed", job.bucket, item.slot.s3_key)
            job.retry = True
            return
        outcome = ImageOutcome(
            index=item.slot.index,
            seed=item.slot.seed,
            bucket=job.bucket,
            s3_key=item.slot.s3_key,
            width=item.spec.width,
            height=item.spec.height,
            cost=cost,
        )
        job.outcomes[item.slot.index] = outcome
        self._image_finished(item, outcome)

    @staticmethod
    def _finished(job: _JobInHand) -> bool:
        return not job.live or len(job.outcomes) == len(job.job.images)

    # --- Report -------------------------------------------------------------------------------
    def _report_safely(self, job: _JobInHand) -> None:
        try:
            self._report(job)
        except Exception:
            logger.exception("reporting job %s failed; its message will reappear", job.job.job_id)
            job.done = True

    def _report(self, job: _JobInHand) -> None:
        if job.done:
            return
        job.done = True
        if job.gone:
            self._delete(job.receipt_handle)
            logger.warning("job %s dropped: its task has ended", job.job.job_id)
            return
        if job.retry:
            logger.warning("job %s left on the queue to be redone", job.job.job_id)
            return
        if job.failure is not None:
            reported = self._fail(job.token, *job.failure)
        else:
            result = GenerationResult(
                images=[
                    job.outcomes[slot.index]
                    for slot in sorted(job.job.images, key=lambda s: s.index)
                ]
            )
            reported = self._succeed(job.token, result)
        if reported:
            self._delete(job.receipt_handle)
            logger.info("job %s reported and deleted", job.job.job_id)

    def _succeed(self, token: str, result: GenerationResult) -> bool:
        return self._answer(
            self._sfn.send_task_success, taskToken=token, output=result.model_dump_json()
        )

    def _fail(self, token: str, code: ErrorCode, cause: str) -> bool:
        return self._answer(
            self._sfn.send_task_failure,
            taskToken=token,
            error=code.value,
            cause=cause[:_CAUSE_LIMIT],
        )

    def _answer(self, call: Any, **kwargs: Any) -> bool:
        """True once the task is settled (answered now or already gone): delete the message."""
        try:
            call(**kwargs)
        except ClientError as error:
            if _client_error_code(error) in _TASK_GONE:
                logger.warning("task already gone (%s): dropping", _client_error_code(error))
                return True
            logger.exception("reporting the task failed; the message will reappear")
            return False
        except Exception:
            logger.exception("reporting the task failed; the message will reappear")
            return False
        return True

    def _delete(self, receipt_handle: str) -> None:
        try:
            self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt_handle)
        except Exception:
            # The task is settled: a redelivered copy finds it gone at its first heartbeat.
            logger.exception("deleting a settled message failed; it will reappear")

    # --- Keep alive ---------------------------------------------------------------------------
    def _heartbeat(self, job: _JobInHand) -> bool:
        """False when the task is gone (stopped, timed out): the job must be dropped."""
        asked_at = time.monotonic()
        try:
            self._sfn.send_task_heartbeat(taskToken=job.token)
        except ClientError as error:
            if _client_error_code(error) in _TASK_GONE:
                logger.warning("job %s: task gone (%s)", job.job.job_id, _client_error_code(error))
                return False
            logger.exception("heartbeat for job %s failed", job.job.job_id)
            return True
        except Exception:
            logger.exception("heartbeat for job %s failed", job.job.job_id)
            return True
        job.checked_at = asked_at
        return True

    def _keep_alive(self, jobs: list[_JobInHand], stop: threading.Event) -> None:
        """Until ``stop``: every interval, extend the visibility of the messages in hand and ask
        whether their tasks still exist. Nothing raised here ends the thread."""
        while not stop.wait(self.settings.heartbeat_interval_seconds):
            for job in jobs:
                if job.done or job.gone:
                    continue
                try:
                    self._change_visibility(
                        job.receipt_handle, self.settings.visibility_timeout_seconds
                    )
                    if not self._heartbeat(job):
                        job.gone = True
                except Exception:
                    logger.exception("keeping job %s alive failed", job.job.job_id)


def _plan_progress(batches: Sequence[Sequence[_Item]], position: int) -> None:
    """Before the call at ``position``: tell each of its jobs how many denoising steps the calls
    after it take up to that job's last one (its ETA covers them: they run before it ends)."""
    last_position: dict[int, int] = {}
    for index, batch in enumerate(batches):
        for item in batch:
            last_position[id(item.job)] = index
    for item in batches[position]:
        if item.job.progress is not None:
            item.job.progress.steps_after_this_call = sum(
                later[0].spec.steps
                for later in batches[position + 1 : last_position[id(item.job)] + 1]
            )


def run_worker(settings: Settings, stop: threading.Event, engine: Engine | None = None) -> None:
    """Load the model (unless given), warm it up and consume the queue until ``stop`` is set."""
    Worker(settings, engine or load_ready_engine(settings)).run(stop)


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_command_line("Consume the GPU job queue (see the README).", argv)
    if not settings.gpu_queue_url:
        raise SystemExit("GPU_QUEUE_URL must be set")
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logger.info("signal %d: finishing the batch in hand, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    run_worker(settings, stop)


if __name__ == "__main__":
    main()
