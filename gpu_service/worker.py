"""The queue face: the workflow's GPU branch.

The state machine's "Generate on GPU" state sends a ``GpuJobMessage`` to the GPU job queue with
``sqs:sendMessage.waitForTaskToken`` and waits. This worker long-polls that queue, generates the
images of the jobs in hand in batches, writes each PNG to ``s3://bucket/slot.s3_key`` and answers
``SendTaskSuccess(GenerationResult)``; a bad job gets ``SendTaskFailure(INVALID_JOB)``.

What keeps jobs from being lost:
- a message is deleted only once its task has been reported (or the task no longer exists);
- while it works the worker sends ``SendTaskHeartbeat`` and extends the messages' visibility
  every ``HEARTBEAT_INTERVAL_SECONDS``; if it dies, the messages reappear after
  ``VISIBILITY_TIMEOUT_SECONDS`` (below the state's HeartbeatSeconds, so the token is still
  alive) and another worker does the job;
- on SIGTERM it finishes the batch in hand, hands back messages it received but did not start
  (visibility 0) and stops.

A message that is not a ``GpuJobMessage`` and has no ``task_token`` cannot be answered: it is
logged and left on the queue, so the queue's redrive policy moves it to the dead-letter queue
where it can be inspected (deleting it would destroy the only evidence; the execution that sent
it, if any, fails on its heartbeat timeout).

    python -m gpu_service.worker            # GPU_QUEUE_URL, IMAGES_BUCKET, MODEL_ID, ...
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import ValidationError

from gpu_service.cli import settings_from_command_line
from gpu_service.engine import Engine, ImageSpec, load_ready_engine, plan_batches
from gpu_service.settings import Settings
from imagegen_common.models import (
    ErrorCode,
    GenerationResult,
    GpuJobMessage,
    ImageOutcome,
    ImageSlot,
    Job,
)

logger = logging.getLogger(__name__)

# Answers meaning the task is gone (finished, stopped or timed out): drop the job.
_TASK_GONE = {"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"}
_CAUSE_LIMIT = 32_768


@dataclass
class _JobInHand:
    message_id: str
    receipt_handle: str
    token: str
    job: Job
    bucket: str
    outcomes: dict[int, ImageOutcome] = field(default_factory=dict)
    failure: tuple[ErrorCode, str] | None = None
    retry: bool = False
    done: bool = False


@dataclass(frozen=True)
class _Item:
    job: _JobInHand
    slot: ImageSlot
    spec: ImageSpec


def _client_error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _token_of(body: str) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    token = data.get("task_token") if isinstance(data, dict) else None
    return token if isinstance(token, str) and token else None


def _summarise(error: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
    ]
    return "invalid GPU job message: " + "; ".join(problems)


class Worker:
    """Consumes the GPU job queue with one engine. ``run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        sqs: Any | None = None,
        s3: Any | None = None,
        stepfunctions: Any | None = None,
    ) -> None:
        if not settings.gpu_queue_url:
            raise ValueError("GPU_QUEUE_URL must be set for the worker")
        self.settings = settings
        self.queue_url: str = settings.gpu_queue_url
        self.engine = engine
        config = Config(retries={"mode": "standard", "max_attempts": 5})
        self._sqs = sqs or boto3.client("sqs", config=config)
        self._s3 = s3 or boto3.client("s3", config=config)
        self._sfn = stepfunctions or boto3.client("stepfunctions", config=config)

    # --- Loop ---------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        logger.info("worker polling %s", self.queue_url)
        liveness = Path(self.settings.liveness_file) if self.settings.liveness_file else None
        while not stop.is_set():
            try:
                self.poll_once(stop)
            except ClientError:
                logger.exception("queue poll failed; retrying")
                stop.wait(self.settings.heartbeat_interval_seconds / 4)
            if liveness is not None:
                liveness.touch()
        logger.info("worker stopped")

    def poll_once(self, stop: threading.Event | None = None) -> int:
        """Receive one round of messages and do their jobs; returns how many messages came."""
        messages = self._receive(self.settings.receive_wait_seconds)
        if messages and self._images_in(messages) < self.settings.max_batch:
            messages += self._receive(0)  # top up the batch with whatever else is waiting
        if not messages:
            return 0
        if stop is not None and stop.is_set():
            self._release(messages)
            return len(messages)
        jobs = [job for job in (self._accept(message) for message in messages) if job]
        if jobs:
            self._work(jobs)
        return len(messages)

    def _receive(self, wait_seconds: int) -> list[dict[str, Any]]:
        response = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.settings.max_messages,
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=self.settings.visibility_timeout_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return list(response.get("Messages", []))

    @staticmethod
    def _images_in(messages: Sequence[dict[str, Any]]) -> int:
        total = 0
        for message in messages:
            try:
                total += len(json.loads(message["Body"])["job"]["images"])
            except (ValueError, KeyError, TypeError):
                continue
        return total

    def _release(self, messages: Sequence[dict[str, Any]]) -> None:
        """Make messages we will not work on visible again at once (shutdown)."""
        for message in messages:
            self._sqs.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=message["ReceiptHandle"],
                VisibilityTimeout=0,
            )
        logger.info("stopping: released %d unstarted messages", len(messages))

    # --- Accept -------------------------------------------------------------------------------
    def _accept(self, message: dict[str, Any]) -> _JobInHand | None:
        body = message.get("Body", "")
        message_id = message.get("MessageId", "?")
        try:
            envelope = GpuJobMessage.model_validate_json(body)
        except ValidationError as error:
            token = _token_of(body)
            if token is None:
                logger.error(
                    "message %s is not a GPU job and has no task_token: left for the DLQ (%s)",
                    message_id,
                    _summarise(error),
                )
                return None
            self._fail(token, ErrorCode.INVALID_JOB, _summarise(error))
            self._delete(message["ReceiptHandle"])
            return None
        job = envelope.job
        problem = self._problem_with(job)
        if problem is not None:
            logger.warning("job %s is invalid: %s", job.job_id, problem)
            self._fail(envelope.task_token, ErrorCode.INVALID_JOB, problem)
            self._delete(message["ReceiptHandle"])
            return None
        in_hand = _JobInHand(
            message_id=message_id,
            receipt_handle=message["ReceiptHandle"],
            token=envelope.task_token,
            job=job,
            bucket=job.bucket or self.settings.images_bucket or "",
        )
        # A heartbeat at once: a redelivered job resets the clock, a stopped one shows up now.
        if not self._heartbeat(in_hand):
            self._delete(in_hand.receipt_handle)
            return None
        logger.info(
            "job %s accepted: %d images %dx%d (receive %s)",
            job.job_id,
            len(job.images),
            job.width,
            job.height,
            message.get("Attributes", {}).get("ApproximateReceiveCount", "?"),
        )
        return in_hand

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
        if not (job.bucket or self.settings.images_bucket):
            return "job.bucket is null and the worker has no IMAGES_BUCKET"
        return None

    # --- Work ---------------------------------------------------------------------------------
    def _work(self, jobs: list[_JobInHand]) -> None:
        items = [
            _Item(job, slot, self._spec(job.job, slot)) for job in jobs for slot in job.job.images
        ]
        stop_heartbeat = threading.Event()
        heartbeat = threading.Thread(
            target=self._keep_alive, args=(jobs, stop_heartbeat), name="heartbeat", daemon=True
        )
        heartbeat.start()
        try:
            for batch in plan_batches(
                items, lambda item: item.spec.batch_key, self.settings.max_batch
            ):
                self._run_batch(batch)
                for job in {id(item.job): item.job for item in batch}.values():
                    if self._finished(job):
                        self._report(job)
        finally:
            stop_heartbeat.set()
            heartbeat.join()
        for job in jobs:
            if not job.done:  # e.g. a failure that left some of its images unmade
                self._report(job)

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
        live = [item for item in batch if item.job.failure is None and not item.job.retry]
        if not live:
            return
        try:
            pngs = self.engine.generate([item.spec for item in live])
        except Exception as error:
            logger.exception("batch of %d images failed", len(live))
            for item in live:
                item.job.failure = (ErrorCode.MODEL_ERROR, f"{type(error).__name__}: {error}")
            return
        for item, png in zip(live, pngs, strict=True):
            try:
                self._s3.put_object(
                    Bucket=item.job.bucket, Key=item.slot.s3_key, Body=png, ContentType="image/png"
                )
            except ClientError:
                # Transient or permissions: leave the message to reappear and be redone.
                logger.exception("writing s3://%s/%s failed", item.job.bucket, item.slot.s3_key)
                item.job.retry = True
                continue
            item.job.outcomes[item.slot.index] = ImageOutcome(
                index=item.slot.index,
                seed=item.slot.seed,
                bucket=item.job.bucket,
                s3_key=item.slot.s3_key,
                width=item.spec.width,
                height=item.spec.height,
            )

    @staticmethod
    def _finished(job: _JobInHand) -> bool:
        return job.failure is not None or job.retry or len(job.outcomes) == len(job.job.images)

    # --- Report -------------------------------------------------------------------------------
    def _report(self, job: _JobInHand) -> None:
        if job.done:
            return
        job.done = True
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
        return True

    def _delete(self, receipt_handle: str) -> None:
        self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt_handle)

    # --- Keep alive ---------------------------------------------------------------------------
    def _heartbeat(self, job: _JobInHand) -> bool:
        """False when the task is gone (stopped, timed out): the job must be dropped."""
        try:
            self._sfn.send_task_heartbeat(taskToken=job.token)
        except ClientError as error:
            if _client_error_code(error) in _TASK_GONE:
                logger.warning("job %s: task gone (%s)", job.job.job_id, _client_error_code(error))
                return False
            logger.exception("heartbeat for job %s failed", job.job.job_id)
        return True

    def _keep_alive(self, jobs: list[_JobInHand], stop: threading.Event) -> None:
        while not stop.wait(self.settings.heartbeat_interval_seconds):
            for job in jobs:
                if job.done:
                    continue
                if not self._heartbeat(job):
                    job.failure = (ErrorCode.TIMEOUT, "task no longer exists")
                try:
                    self._sqs.change_message_visibility(
                        QueueUrl=self.queue_url,
                        ReceiptHandle=job.receipt_handle,
                        VisibilityTimeout=self.settings.visibility_timeout_seconds,
                    )
                except ClientError:
                    logger.exception("extending visibility of job %s failed", job.job.job_id)


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
