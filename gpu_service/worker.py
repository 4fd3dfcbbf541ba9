"""The queue face: the workflow's GPU branch, as a pipeline that keeps the engine busy.

The state machine's "Generate on GPU" state sends a ``GpuJobMessage`` to the GPU job queue with
``sqs:sendMessage.waitForTaskToken`` and waits, with one deadline for queue wait plus generation
(the job's ``gpu_timeout_seconds``) and no ``HeartbeatSeconds``: time spent waiting in the queue
must not read as a dead worker. This worker takes the jobs off the queue, generates their images
in batches, writes each PNG to ``s3://bucket/slot.s3_key`` and answers
``SendTaskSuccess(GenerationResult)``; a bad job gets ``SendTaskFailure(INVALID_JOB)``.

The pipeline, after vLLM's engine loop: the pipeline call is the busy loop, and nothing in it
waits for a network call. Around it, each stage on threads of its own:

1. **Intake** (a thread): receives and parses ahead, and accepts each job with a first heartbeat
   (on the call threads, side by side, while it receives again), so that the next batch is ready
   when a call ends. It receives only while fewer than ``AHEAD_BATCHES`` batches of images wait
   for the engine (or are being accepted) and fewer than ``BEHIND_BATCHES`` batches are still
   being stored or reported: when S3 or Step Functions fall behind, the worker receives less,
   and what it holds stays bounded.
2. **Engine** (the loop, on the thread that runs ``run``): takes the oldest waiting image and the
   waiting images that can share its call (``plan_batches``' rule), up to ``MAX_BATCH``, and
   makes them; a call short of a full batch first waits (0.2 s at most) for the jobs whose
   acceptance is in flight. A job that waited through an earlier call, and whose task was last
   found alive more than ``RECHECK_AFTER_SECONDS`` ago, is checked again (it may have been
   stopped meanwhile), but that check was started when the earlier call began: the engine waits
   only for the rest of one still in flight. The engine itself runs in a process of its own
   (``gpu_service.engine_process``, ``ENGINE_PROCESS``): the threads here are Python, and in one
   interpreter they would slow every operator the pipeline dispatches.
3. **Store** (``STORE_THREADS`` threads): encodes each image as PNG (CPU work, off the engine's
   thread) and puts it in S3.
4. **Report** (``CALL_THREADS`` threads, Step Functions has no batch form): once every image of
   a job is stored, or the job has failed, answers its task; then its message is deleted, with
   ``DeleteMessageBatch`` (up to 10 at a time, a short linger to fill a batch).
5. **Keep alive** (a thread): every ``HEARTBEAT_INTERVAL_SECONDS``, extends the visibility of the
   message of every job in hand, in whatever stage (``ChangeMessageVisibilityBatch``), and
   heartbeats its task (side by side) to learn whether it has ended.

Liveness comes from SQS, not from Step Functions: a received message is invisible to other
workers while the worker extends it; if the worker dies, the extensions stop, the message
reappears after the visibility timeout and another worker redoes the job (S3 writes are
idempotent); after the queue's ``maxReceiveCount`` receives the redrive policy moves it to the
dead-letter queue, whose function fails the task with ``WORKER_LOST``. A heartbeat answered
``TaskTimedOut``, ``InvalidToken`` or ``TaskDoesNotExist`` means the task has ended (stopped,
timed out): the job is dropped before more GPU time is spent on it, and its message deleted.

What keeps jobs from being lost:
- a message is deleted only once its task has been reported (or the task no longer exists);
- a failed upload fails only its own job: the job is left on the queue to be redone, its
  message no longer extended; a job that breaks the pipeline fails alone (each job of a failed
  shared call is tried by itself);
- on SIGTERM the worker stops receiving, hands back the messages whose jobs have not started
  (visibility 0), finishes the jobs it has started, stores and reports them, deletes their
  messages and stops.

Each image is charged its share of the measured seconds of its pipeline call, not of the whole
path. Progress: with ``EVENT_BUS_NAME`` set (and ``PROGRESS_REPORTING`` not false) the worker
puts "Image Generation Progress" events on that bus for each job (``gpu_service.progress``):
"generating" when it accepts the job, then denoising steps at most once per
``PROGRESS_INTERVAL_SECONDS`` per job, then "storing" with each image's outcome.

``poll_once`` runs one round through the same stages, one after another, and returns when the
round's jobs are settled (the tests' and the measurements' way in); ``run`` runs the pipeline.

    python -m gpu_service.worker            # GPU_QUEUE_URL, IMAGES_BUCKET, MODEL_ID, ...
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import ParamValidationError

from gpu_service.cli import settings_from_command_line
from gpu_service.engine_process import EngineProcess, EngineProcessLost
from gpu_service.image_specs import ImageSpec, StepObserver, encode_image, plan_batches
from gpu_service.job_messages import (
    MAX_BODY_CHARACTERS,
    ParsedBody,
    parse_body,
    preview,
    problem_with,
    short,
)
from gpu_service.progress import CallShare, JobProgress, ProgressPublisher, ProgressReporter
from gpu_service.queue_calls import QueueCalls, TaskCalls
from gpu_service.settings import Settings
from gpu_service.stage_times import StageTimes
from imagegen_common.models import (
    Cost,
    ErrorCode,
    ErrorInfo,
    GenerationResult,
    ImageOutcome,
    ImageSlot,
    Job,
)

__all__ = ["MAX_BODY_CHARACTERS", "Worker", "gpu_image_cost", "main", "parse_body", "run_worker"]

logger = logging.getLogger(__name__)

_MAX_ERROR_BACKOFF_SECONDS = 30.0
_DELETE_LINGER_SECONDS = 0.02
"""How long a delete waits for others to share its DeleteMessageBatch."""
_FILL_WAIT_SECONDS = 0.2
"""How long at most a call short of a full batch waits for the jobs being accepted."""
_IDLE_WAKE_SECONDS = 0.5
"""How often an idle engine loop looks again (it is woken at once when work comes)."""


def aws_client_config(settings: Settings) -> Config:
    """The worker's boto3 client configuration: retries, and enough connections for the
    threads that share each client (fewer would open and drop a connection per call)."""
    return Config(
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=settings.call_threads + settings.store_threads + 4,
    )


def gpu_image_cost(seconds: float, price_per_hour_usd: float, images_in_call: int) -> Cost:
    """One image's share of a pipeline call: the call's measured seconds at the GPU's hourly
    price, split evenly among the images the call made (they share the batch)."""
    usd = seconds * price_per_hour_usd / 3600 / images_in_call
    return Cost(
        usd=round(usd, 8),
        basis=f"GPU {seconds:.3f} s x ${price_per_hour_usd:g}/GPU-hour / {images_in_call} "
        "images in the call",
    )


class ImageMaker(Protocol):
    """What the worker needs of an engine: ``Engine`` in this process, or ``EngineProcess``."""

    def generate_images(
        self, specs: Sequence[ImageSpec], on_step: StepObserver | None = None
    ) -> list[Any]: ...


@dataclass
class _Received:
    message: dict[str, Any]
    parsed: ParsedBody

    @property
    def message_id(self) -> str:
        return short(str(self.message.get("MessageId", "?")), 80)

    @property
    def receive_count(self) -> str:
        attributes = self.message.get("Attributes") or {}
        return str(attributes.get("ApproximateReceiveCount", "?"))


@dataclass(eq=False)
class _JobInHand:
    """A job whose message the worker holds, from its acceptance until the message is deleted,
    handed back or left to reappear. Its state changes under the worker's lock."""

    message_id: str
    receipt_handle: str
    token: str
    job: Job
    bucket: str
    checked_at: float
    """``time.monotonic()`` when the last heartbeat that found the task alive was sent."""
    outcomes: dict[int, ImageOutcome] = field(default_factory=dict)
    failure: tuple[ErrorCode, str] | None = None
    retry: bool = False  # leave the message to reappear and be redone
    gone: bool = False  # the task has ended: drop the job, delete the message
    started: bool = False  # some of its images went into a pipeline call
    waiting: int = 0  # its images not yet in a pipeline call
    storing: int = 0  # its images made and not yet stored
    reporting: bool = False  # its answer is on its way: nothing more to do but that
    settled: bool = False  # its message deleted, handed back or left: no longer held
    check: Future[bool] | None = None  # a heartbeat in flight since a call began
    progress: JobProgress | None = None  # None: its progress is not reported

    @property
    def live(self) -> bool:
        return not (self.reporting or self.gone or self.retry or self.failure is not None)

    @property
    def complete(self) -> bool:
        return len(self.outcomes) == len(self.job.images)


@dataclass(frozen=True)
class _Item:
    job: _JobInHand
    slot: ImageSlot
    spec: ImageSpec


class Worker:
    """Consumes the GPU job queue with one engine: ``run(stop)`` until ``stop`` is set.

    ``clock`` times the pipeline calls whose seconds the images' costs come from (tests give a
    fake one); ``progress_clock`` paces and times the progress events. ``events`` (an
    EventBridge client, made once here when not given) is used only when progress is reported.
    ``times`` says where the worker's time went (each AWS call, PNG encoding, the engine).
    """

    def __init__(
        self,
        settings: Settings,
        engine: ImageMaker,
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
        self.times = StageTimes()
        self._clock = clock
        config = aws_client_config(settings)
        self._queue = QueueCalls(
            sqs or boto3.client("sqs", config=config), self.queue_url, self.times
        )
        self._tasks = TaskCalls(
            stepfunctions or boto3.client("stepfunctions", config=config), self.times
        )
        self._s3 = s3 or boto3.client("s3", config=config)
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
        self._changed = threading.Condition()
        """Guards every job's state and the lists below; notified whenever either changes."""
        self._waiting: list[_Item] = []
        self._held: list[_JobInHand] = []
        self._stores_pending = 0
        self._accepting = 0  # images of jobs whose first heartbeat is in flight
        self._last_call_seconds = 0.0
        self._previous_call_started: float | None = None
        self._calls = ThreadPoolExecutor(settings.call_threads, thread_name_prefix="calls")
        self._stores = ThreadPoolExecutor(settings.store_threads, thread_name_prefix="store")
        self._deletes: queue.Queue[str | None] = queue.Queue()
        self._deleter: threading.Thread | None = None
        self._keeper: threading.Thread | None = None
        self._stop_keeper = threading.Event()

    # --- Lifecycle -------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """The pipeline, until ``stop`` is set: intake and keep-alive on threads of their own,
        the engine here. Then the jobs started are finished, stored and reported, the others
        handed back, and the progress events still queued are sent."""
        logger.info("worker polling %s", self.queue_url)
        self._start_helpers()
        intake = threading.Thread(target=self._intake, args=(stop,), name="intake", daemon=True)
        try:
            self._touch_liveness()  # ready: the model is loaded and polling begins
            intake.start()
            self._engine_loop(stop)
        finally:
            stop.set()
            intake.join(timeout=self.settings.receive_wait_seconds + 30)
            self._wait_for_accepts()
            self._hand_back_unstarted()
            self._finish_started()
            self._drain()
            self.close()
        logger.info("worker stopped")

    def poll_once(self, stop: threading.Event | None = None) -> int:
        """One round through the stages, one after another: receive (topping up a round short of
        a batch with what else is waiting), accept, make, store, report and delete; returns how
        many messages came, once their jobs are settled. With ``stop`` set (before or during),
        the jobs not started are handed back."""
        received = self._receive(self.settings.receive_wait_seconds)
        if received and self._images_in(received) < self.settings.max_batch:
            received += self._receive(0)
        if not received:
            return 0
        if stop is not None and stop.is_set():
            handles = [str(item.message["ReceiptHandle"]) for item in received]
            self._queue.change_visibility(handles, 0)
            logger.info("stopping: released %d unstarted messages", len(handles))
            return len(received)
        self._start_helpers()
        try:
            self._accept_all(received)
            while True:
                if stop is not None and stop.is_set():
                    self._hand_back_unstarted()
                if not self._run_next_call():
                    break
            self._drain()
        finally:
            self._stop_helpers()
        return len(received)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the stages' threads and send the progress events still queued (for up to
        ``timeout`` s)."""
        self._stop_helpers()
        self._calls.shutdown(wait=True)
        self._stores.shutdown(wait=True)
        if self.progress is not None:
            self.progress.close(timeout)

    def _start_helpers(self) -> None:
        if self._deleter is None or not self._deleter.is_alive():
            self._deleter = threading.Thread(target=self._delete_in_batches, name="deleter")
            self._deleter.daemon = True
            self._deleter.start()
        if self._keeper is None or not self._keeper.is_alive():
            self._stop_keeper.clear()
            self._keeper = threading.Thread(target=self._keep_alive, name="keep-alive")
            self._keeper.daemon = True
            self._keeper.start()

    def _stop_helpers(self) -> None:
        self._stop_keeper.set()
        if self._keeper is not None:
            self._keeper.join()
            self._keeper = None
        if self._deleter is not None:
            self._deletes.put(None)
            self._deleter.join()
            self._deleter = None

    def _touch_liveness(self) -> None:
        if not self.settings.liveness_file:
            return
        try:
            Path(self.settings.liveness_file).touch()
        except OSError:
            logger.exception("could not touch the liveness file %s", self.settings.liveness_file)

    # --- 1. Intake ----------------------------------------------------------------------------
    def _intake(self, stop: threading.Event) -> None:
        """Receive while there is room ahead of the engine and behind it; nothing raised here
        ends the thread (a failed round is retried after a pause that doubles, up to 30 s)."""
        failures_in_a_row = 0
        while not stop.is_set():
            try:
                room = self._wait_for_room(stop)
                if room:
                    received = self._receive(self.settings.receive_wait_seconds, max_messages=room)
                    if received and not stop.is_set():
                        self._start_accepting(received)
                    elif received:
                        self._queue.change_visibility(
                            [str(item.message["ReceiptHandle"]) for item in received], 0
                        )
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
            self._touch_liveness()

    def _wait_for_room(self, stop: threading.Event) -> int:
        """How many messages to receive now (0 after a wait with no room: look again)."""
        ahead = int(self.settings.ahead_batches * self.settings.max_batch)
        behind = int(self.settings.behind_batches * self.settings.max_batch)

        def room() -> int:
            if self._images_waiting() >= ahead or self._images_behind() >= behind:
                return 0
            return self.settings.max_messages

        with self._changed:
            self._changed.wait_for(
                lambda: room() > 0 or stop.is_set(), self.settings.receive_wait_seconds or 1
            )
            return 0 if stop.is_set() else room()

    def _images_waiting(self) -> int:  # under the lock
        return len(self._waiting) + self._accepting

    def _images_behind(self) -> int:  # under the lock
        return self._stores_pending + sum(
            len(job.job.images) for job in self._held if job.reporting
        )

    def _receive(self, wait_seconds: int, max_messages: int | None = None) -> list[_Received]:
        messages = self._queue.receive(
            max_messages or self.settings.max_messages,
            wait_seconds,
            self.settings.visibility_timeout_seconds,
        )
        return [_Received(message, parse_body(message.get("Body"))) for message in messages]

    @staticmethod
    def _images_in(received: Sequence[_Received]) -> int:
        return sum(
            len(item.parsed.envelope.job.images)
            for item in received
            if item.parsed.envelope is not None
        )

    def _accept_all(self, received: Sequence[_Received]) -> None:
        """Accept the messages' jobs and wait until each is accepted or let go (``poll_once``)."""
        for accepting in self._start_accepting(received):
            accepting.result()

    def _start_accepting(self, received: Sequence[_Received]) -> list[Future[None]]:
        """Accept each message's job side by side on the call threads (a first heartbeat each),
        without waiting: the intake receives again meanwhile. A message whose handling raises
        stays on the queue: it reappears, and after maxReceiveCount receives it is moved to the
        dead-letter queue."""
        candidates = []
        for item in received:
            try:
                candidate = self._candidate(item)
            except Exception:
                logger.exception(
                    "message %s could not be handled; left on the queue", item.message_id
                )
                continue
            if candidate is not None:
                candidates.append((candidate, item.receive_count))
        with self._changed:
            self._accepting += sum(len(job.job.images) for job, _ in candidates)
        return [self._calls.submit(self._accept, job, count) for job, count in candidates]

    def _accept(self, job: _JobInHand, receive_count: str) -> None:
        """A call thread: the job's first heartbeat, then its images queued for the engine (or,
        its task gone, its message deleted)."""
        alive = False
        try:
            alive = self._first_heartbeat(job)
            if not alive:
                self._deletes.put(job.receipt_handle)
                return
            logger.info(
                "job %s accepted: %d images %dx%d (receive %s)",
                job.job.job_id,
                len(job.job.images),
                job.job.width,
                job.job.height,
                receive_count,
            )
            if self.progress is not None:
                job.progress = self.progress.job_started(
                    job.job.job_id,
                    job.job.owner,
                    images=len(job.job.images),
                    steps=self._steps_of(job.job),
                )
        finally:
            with self._changed:
                self._accepting -= len(job.job.images)
                if alive:
                    job.waiting = len(job.job.images)
                    self._held.append(job)
                    self._waiting += [
                        _Item(job, slot, self._spec(job.job, slot)) for slot in job.job.images
                    ]
                self._changed.notify_all()

    def _wait_for_accepts(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._accepting == 0)

    def _candidate(self, received: _Received) -> _JobInHand | None:
        """The job of a message, or None when there is none to run (rejected or left)."""
        parsed, message = received.parsed, received.message
        receipt_handle = str(message["ReceiptHandle"])
        if parsed.envelope is None:
            if parsed.token is None:
                logger.error(
                    "message %s (receive %s) is not a GPU job and has no task_token: left for "
                    "the dead-letter queue. %s. Body: %s",
                    received.message_id,
                    received.receive_count,
                    short(parsed.problem or ""),
                    preview(message.get("Body")),
                )
                return None
            logger.warning(
                "message %s: %s", received.message_id, short(parsed.problem or "invalid job")
            )
            self._reject(parsed.token, receipt_handle, parsed.problem or "invalid GPU job message")
            return None
        job = parsed.envelope.job
        problem = problem_with(
            job, self.settings.max_pixels, self.settings.images_bucket, self.settings.max_steps
        )
        if problem is not None:
            logger.warning("job %s is invalid: %s", short(job.job_id, 80), problem)
            self._reject(parsed.envelope.task_token, receipt_handle, problem)
            return None
        return _JobInHand(
            message_id=received.message_id,
            receipt_handle=receipt_handle,
            token=parsed.envelope.task_token,
            job=job,
            bucket=job.bucket or self.settings.images_bucket or "",
            checked_at=time.monotonic(),
        )

    def _first_heartbeat(self, job: _JobInHand) -> bool:
        """At once on receipt: a job whose task has ended (stopped, timed out) shows up now."""
        asked_at = time.monotonic()
        alive = self._tasks.heartbeat(job.token, job.job.job_id)
        job.checked_at = asked_at
        return alive

    def _reject(self, token: str, receipt_handle: str, problem: str) -> None:
        """Fail the task with INVALID_JOB; delete the message once that is reported."""
        if self._tasks.fail(token, ErrorCode.INVALID_JOB, problem):
            self._queue.delete([receipt_handle])

    def _spec(self, job: Job, slot: ImageSlot) -> ImageSpec:
        assert job.width is not None and job.height is not None  # checked by problem_with
        return ImageSpec(
            prompt=job.request.prompt,
            negative_prompt=job.request.negative_prompt,
            seed=slot.seed,
            width=job.width,
            height=job.height,
            steps=self._steps_of(job),
            guidance=(
                job.controls.guidance_scale
                if job.controls.guidance_scale is not None
                else self.settings.default_guidance
            ),
            scheduler=job.controls.scheduler.value if job.controls.scheduler else None,
        )

    def _steps_of(self, job: Job) -> int:
        """The job's own steps ("Validate Prompt" resolved them); this worker's default for a job
        planned without (a Bedrock job fallen back to the GPU)."""
        return job.controls.steps or self.settings.default_steps

    # --- 2. Engine ----------------------------------------------------------------------------
    def _engine_loop(self, stop: threading.Event) -> None:
        """Make batches until ``stop``; nothing raised here ends the loop."""
        failures_in_a_row = 0
        while not stop.is_set():
            try:
                if not self._run_next_call():
                    with self._changed:
                        waited_from = time.perf_counter()
                        self._changed.wait_for(
                            lambda: bool(self._waiting) or stop.is_set(), _IDLE_WAKE_SECONDS
                        )
                        self.times.add(
                            "engine idle: nothing to make", time.perf_counter() - waited_from
                        )
                failures_in_a_row = 0
            except EngineProcessLost:
                logger.critical("the engine process is gone: stopping, the jobs left to others")
                stop.set()
                raise
            except Exception:
                failures_in_a_row += 1
                logger.exception("the engine loop failed (%d in a row)", failures_in_a_row)
                stop.wait(min(self.settings.error_backoff_seconds * failures_in_a_row, 5.0))

    def _run_next_call(self, started_jobs_only: bool = False) -> bool:
        """Make the next batch of waiting images; False when there was none."""
        behind_limit = int(2 * self.settings.behind_batches * self.settings.max_batch)
        with self._changed:
            waited_from = time.perf_counter()
            # Memory stays bounded: past twice the limit the intake already keeps to, the engine
            # waits for the stores to catch up.
            self._changed.wait_for(lambda: self._stores_pending < behind_limit)
            if time.perf_counter() - waited_from > 0.0005:
                self.times.add("engine idle: stores behind", time.perf_counter() - waited_from)
            # A call short of a full batch waits (a moment at most) for the jobs whose first
            # heartbeat is in flight: they are one call away, and a call's cost hardly depends on
            # how many images share it. With a backlog, the batch is full already.
            waited_from = time.perf_counter()
            if (
                self._changed.wait_for(
                    lambda: len(self._waiting) >= self.settings.max_batch or not self._accepting,
                    _FILL_WAIT_SECONDS,
                )
                and time.perf_counter() - waited_from > 0.0005
            ):
                self.times.add("engine idle: batch filling", time.perf_counter() - waited_from)
            batch = self._take_batch(started_jobs_only)
        if not batch:
            return False
        batch = self._checked(batch)
        if not batch:
            return True
        with self._changed:
            for item in batch:
                item.job.started = True
                item.job.storing += 1
                self._stores_pending += 1
            self._previous_call_started = now = time.monotonic()
            # The jobs still waiting have now waited through a call's start: those not found
            # alive lately are checked again while this call runs, so that their own call need
            # not wait for it.
            # (Those due by the time this call ends, as long as the last one took.)
            for job in {id(i.job): i.job for i in self._waiting if i.job.live}.values():
                if job.check is None and self._due_for_check(job, now + self._last_call_seconds):
                    job.check = self._calls.submit(self._recheck, job)
        self._plan_progress(batch)
        try:
            made = self._generate(batch)
        except EngineProcessLost:
            self._leave_every_job(batch)
            raise
        for item, image, cost in made:
            self._stores.submit(self._store, item, image, cost)
        return True

    def _take_batch(self, started_jobs_only: bool) -> list[_Item]:  # under the lock
        """The oldest waiting image of a live job and those that can share its call."""
        for item in [i for i in self._waiting if not i.job.live]:
            self._waiting.remove(item)
            item.job.waiting -= 1
            self._settle_if_done(item.job)
        candidates = [item for item in self._waiting if not started_jobs_only or item.job.started]
        if not candidates:
            return []
        # The first batch of the plan is the oldest image's, with those that can share its call.
        batch = plan_batches(candidates, lambda item: item.spec.batch_key, self.settings.max_batch)[
            0
        ]
        for item in batch:
            self._waiting.remove(item)
            item.job.waiting -= 1
        return batch

    def _checked(self, batch: list[_Item]) -> list[_Item]:
        """The items of ``batch`` whose tasks are alive: each job that waited through an earlier
        call has been checked since that call began (the engine waits only for the rest of a
        check still in flight)."""
        previous = self._previous_call_started
        pending: list[Future[bool]] = []
        now = time.monotonic()
        with self._changed:
            for job in {id(item.job): item.job for item in batch}.values():
                if previous is None or job.checked_at >= previous:
                    continue
                if not self._due_for_check(job, now):
                    continue
                if job.check is None:  # no check since that call began: one now
                    job.check = self._calls.submit(self._recheck, job)
                pending.append(job.check)
        if pending:
            with self.times.timed("engine idle: checks in flight"):
                for check in pending:
                    check.result()
        with self._changed:
            dropped = {id(i.job): i.job for i in batch if i.job.gone}.values()
            for job in dropped:
                self._settle_if_done(job)
        return [item for item in batch if not item.job.gone]

    def _due_for_check(self, job: _JobInHand, now: float) -> bool:
        return now - job.checked_at > self.settings.recheck_after_seconds

    def _recheck(self, job: _JobInHand) -> bool:
        asked_at = time.monotonic()
        alive = self._tasks.heartbeat(job.token, job.job.job_id)
        with self._changed:
            job.check = None
            if alive:
                job.checked_at = asked_at
            else:
                job.gone = True
                self._settle_if_done(job)
            self._changed.notify_all()
        return alive

    def _generate(self, items: list[_Item]) -> list[tuple[_Item, Any, Cost]]:
        """One pipeline call for ``items``, each image with its share of the call's measured
        seconds. If it fails and several jobs share it, each job is tried alone, so one job
        that breaks the pipeline does not fail the others (the failed call is charged to none)."""
        try:
            on_step = self._step_observer(items)
            started = self._clock()
            with self.times.timed("engine: pipeline calls"):
                if on_step is None:
                    images = self.engine.generate_images([i.spec for i in items])
                else:
                    images = self.engine.generate_images([i.spec for i in items], on_step=on_step)
            seconds = self._clock() - started
            self._last_call_seconds = seconds
            # The local stack reads this line for its engine-versus-orchestration figures.
            logger.info("engine: %d images in %.3f s", len(items), seconds)
            cost = gpu_image_cost(seconds, self.settings.gpu_price_per_hour_usd, len(items))
            return [(item, image, cost) for item, image in zip(items, images, strict=True)]
        except EngineProcessLost:
            raise  # not the jobs' fault: _run_next_call leaves them all to another worker
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
            with self._changed:
                job.failure = (ErrorCode.MODEL_ERROR, f"{type(error).__name__}: {error}")
                for item in items:
                    self._image_failed(item, *job.failure)
                    job.storing -= 1
                    self._stores_pending -= 1
                self._settle_if_done(job)
                self._changed.notify_all()
            return []

    def _leave_every_job(self, in_call: list[_Item]) -> None:
        """No image can be made any more: every job in hand is left on the queue for another
        worker: those not started at once, the others once what they have in the stores is done
        (their messages reappear when their visibility runs out)."""
        self._hand_back_unstarted()
        with self._changed:
            for item in in_call:
                item.job.storing -= 1
                self._stores_pending -= 1
            for job in self._held:
                job.retry = True
            for job in list(self._held):
                self._settle_if_done(job)
            self._changed.notify_all()

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

    def _plan_progress(self, batch: list[_Item]) -> None:
        """Before a call: tell each of its jobs how many denoising steps its images still
        waiting take (its ETA covers them: they run before it ends)."""
        if self.progress is None:
            return
        with self._changed:
            waiting: dict[int, int] = {}
            for item in self._waiting:
                waiting[id(item.job)] = waiting.get(id(item.job), 0) + 1
        for job in {id(i.job): i.job for i in batch}.values():
            if job.progress is not None:
                later_calls = -(-waiting.get(id(job), 0) // self.settings.max_batch)  # ceiling
                job.progress.steps_after_this_call = later_calls * self._steps_of(job.job)

    # --- 3. Store -----------------------------------------------------------------------------
    def _store(self, item: _Item, image: Any, cost: Cost) -> None:
        """Encode and put one image (a store thread); record its outcome."""
        job = item.job
        controls = job.job.controls
        try:
            with self.times.timed("encode image"):
                data = (
                    image
                    if isinstance(image, bytes)  # already PNG (the engine's own encoding)
                    else encode_image(image, controls.output_format.value, controls.output_quality)
                )
            with self.times.timed("PutObject"):
                self._s3.put_object(
                    Bucket=job.bucket,
                    Key=item.slot.s3_key,
                    Body=data,
                    ContentType=controls.output_format.content_type,
                )
        except ParamValidationError as error:  # a bucket name S3 cannot have: the job's fault
            problem = f"cannot write s3://{job.bucket}: {error}"
            self._stored(item, failure=(ErrorCode.INVALID_JOB, problem))
            return
        except Exception:
            # Transient or permissions: leave the message to reappear and be redone.
            logger.exception("writing s3://%s/%s failed", job.bucket, item.slot.s3_key)
            self._stored(item, retry=True)
            return
        outcome = ImageOutcome(
            index=item.slot.index,
            seed=item.slot.seed,
            bucket=job.bucket,
            s3_key=item.slot.s3_key,
            width=item.spec.width,
            height=item.spec.height,
            content_type=controls.output_format.content_type,
            cost=cost,
        )
        self._stored(item, outcome=outcome)

    def _stored(
        self,
        item: _Item,
        *,
        outcome: ImageOutcome | None = None,
        failure: tuple[ErrorCode, str] | None = None,
        retry: bool = False,
    ) -> None:
        job = item.job
        with self._changed:
            job.storing -= 1
            self._stores_pending -= 1
            kept = outcome is not None and job.live
            if outcome is not None and kept:
                job.outcomes[item.slot.index] = outcome
            if failure is not None and job.failure is None:
                job.failure = failure
            job.retry = job.retry or retry
            self._settle_if_done(job)
            self._changed.notify_all()
        if outcome is not None and kept:
            self._image_finished(item, outcome)
        elif failure is not None:
            self._image_failed(item, *failure)

    def _image_finished(self, item: _Item, outcome: ImageOutcome) -> None:
        if self.progress is not None and item.job.progress is not None:
            self.progress.image_finished(item.job.progress, outcome)

    def _image_failed(self, item: _Item, code: ErrorCode, message: str) -> None:
        self._image_finished(
            item,
            ImageOutcome(
                index=item.slot.index,
                seed=item.slot.seed,
                error=ErrorInfo(code=code, message=short(message, 1000)),
            ),
        )

    # --- 4. Report ----------------------------------------------------------------------------
    def _settle_if_done(self, job: _JobInHand) -> None:  # under the lock
        """Send the job's answer once nothing more of it is coming: every image stored, or it
        failed, was dropped or is to be redone, with none of its images still in the engine or
        in a store."""
        if job.reporting or job.settled or job.storing:
            return
        if job.live and not job.complete:
            return
        if job.waiting:  # its images still waiting will not be made: it is over
            for item in [i for i in self._waiting if i.job is job]:
                self._waiting.remove(item)
            job.waiting = 0
        job.reporting = True
        self._calls.submit(self._report, job)

    def _report(self, job: _JobInHand) -> None:
        """Answer the job's task (a call thread); queue its message for deletion once settled."""
        delete = False
        try:
            if job.gone:
                logger.warning("job %s dropped: its task has ended", job.job.job_id)
                delete = True
            elif job.retry:
                logger.warning("job %s left on the queue to be redone", job.job.job_id)
            elif job.failure is not None:
                delete = self._tasks.fail(job.token, *job.failure)
            else:
                result = GenerationResult(
                    images=[
                        job.outcomes[slot.index]
                        for slot in sorted(job.job.images, key=lambda s: s.index)
                    ]
                )
                delete = self._tasks.succeed(job.token, result)
        except Exception:
            logger.exception("reporting job %s failed; its message will reappear", job.job.job_id)
        if delete:
            self._deletes.put(job.receipt_handle)
            logger.info("job %s reported", job.job.job_id)
        else:
            self._release(job)

    def _release(self, job: _JobInHand) -> None:
        with self._changed:
            job.settled = True
            if job in self._held:
                self._held.remove(job)
            self._changed.notify_all()

    def _delete_in_batches(self) -> None:
        """Delete settled messages, up to 10 a call: each waits a moment for others to share
        its DeleteMessageBatch. ``None`` on the queue ends the thread, after what came before."""
        finished = False
        while not finished:
            handle = self._deletes.get()
            if handle is None:
                return
            handles = [handle]
            deadline = time.monotonic() + _DELETE_LINGER_SECONDS
            while len(handles) < 10:
                try:
                    more = self._deletes.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    finished = True
                    break
                handles.append(more)
            try:
                self._queue.delete(handles)  # logs what failed: those reappear, settled
            finally:
                with self._changed:
                    for job in [j for j in self._held if j.receipt_handle in set(handles)]:
                        job.settled = True
                        self._held.remove(job)
                    self._changed.notify_all()

    def _drain(self) -> None:
        """Wait until every job in hand is settled (stored, reported, deleted or let go)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._held and self._stores_pending == 0)

    # --- Stopping -----------------------------------------------------------------------------
    def _hand_back_unstarted(self) -> None:
        """Make the messages of jobs not started visible again at once (shutdown)."""
        with self._changed:
            unstarted = [job for job in self._held if not job.started and not job.reporting]
            for job in unstarted:
                job.settled = True
                self._held.remove(job)
            self._waiting = [item for item in self._waiting if item.job.started]
            self._changed.notify_all()
        if unstarted:
            self._queue.change_visibility([job.receipt_handle for job in unstarted], 0)
            logger.info("stopping: released %d unstarted messages", len(unstarted))

    def _finish_started(self) -> None:
        """Make the images still waiting of the jobs already started (shutdown)."""
        try:
            while self._run_next_call(started_jobs_only=True):
                pass
        except Exception:
            logger.exception("finishing the started jobs failed; their messages will reappear")

    # --- 5. Keep alive ------------------------------------------------------------------------
    def _keep_alive(self) -> None:
        """Every interval until stopped: extend the visibility of every message in hand and ask
        whether each job's task still exists. Nothing raised here ends the thread."""
        while not self._stop_keeper.wait(self.settings.heartbeat_interval_seconds):
            try:
                with self._changed:
                    held = [job for job in self._held if not job.settled]
                self._queue.change_visibility(
                    [job.receipt_handle for job in held], self.settings.visibility_timeout_seconds
                )
                asking = [job for job in held if job.live]
                for job, alive in zip(
                    asking, self._calls.map(self._heartbeat, asking), strict=True
                ):
                    if not alive:
                        with self._changed:
                            job.gone = True
                            self._settle_if_done(job)
                            self._changed.notify_all()
            except Exception:
                logger.exception("keeping the jobs in hand alive failed")

    def _heartbeat(self, job: _JobInHand) -> bool:
        asked_at = time.monotonic()
        alive = self._tasks.heartbeat(job.token, job.job.job_id)
        if alive:
            job.checked_at = max(job.checked_at, asked_at)
        return alive


def run_worker(settings: Settings, stop: threading.Event, engine: ImageMaker | None = None) -> None:
    """Load the model (unless given), warm it up and consume the queue until ``stop`` is set.
    The model is loaded in an engine process of its own (``ENGINE_PROCESS``, the default), or
    in this one."""
    if engine is not None:
        Worker(settings, engine).run(stop)
    elif settings.engine_process:
        engine_process = EngineProcess.start(settings)
        try:
            Worker(settings, engine_process).run(stop)
        finally:
            engine_process.close()
    else:
        from gpu_service.engine import load_ready_engine  # torch, in this process

        Worker(settings, load_ready_engine(settings)).run(stop)


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
