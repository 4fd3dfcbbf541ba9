"""Progress of the worker's jobs, published as "Image Generation Progress" events on our bus.

Three parts, each testable alone:

- ``StepThrottle``: at most one step event per job per interval (the last step of a pipeline
  call always passes), on an injectable clock;
- ``JobProgress``: where one job is, counted in denoising steps over all its images (the ones
  already stored included), with an ETA from the measured seconds per step;
- ``ProgressPublisher``: a background thread with a bounded queue that puts the events on the
  bus, up to 10 per ``PutEvents`` call. ``publish`` never blocks and never raises: the denoising
  thread only queues an event; a full queue drops it, a failed put is logged and dropped.

``ProgressReporter`` ties them together for the worker. Nothing here can fail or slow a job
beyond building a small pydantic model per sent event on the denoising thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gpu_service.image_specs import DenoisingStep, StepObserver
from imagegen_common.models import (
    IMAGE_GENERATION_PROGRESS,
    Backend,
    ImageGenerationProgressDetail,
    ImageOutcome,
    Progress,
    Stage,
)

logger = logging.getLogger(__name__)

PUT_EVENTS_MAX_ENTRIES = 10
"""EventBridge's limit on the entries of one PutEvents call."""
DEFAULT_MAX_PENDING = 1000
"""Events waiting to be put before new ones are dropped (about 2 minutes of 8 jobs at 1/s)."""
_LOG_EVERY = 100  # repeated drops or failures: one log line per this many


class StepThrottle:
    """Lets through at most one event per ``interval_seconds`` for one job; ``last`` (the final
    step of a pipeline call) always passes, so "step N of N" is never lost. A pass counts as a
    send: the next event waits a full interval after it."""

    def __init__(
        self, interval_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._sent_at: float | None = None

    def admit(self, *, last: bool = False) -> bool:
        now = self._clock()
        if last or self._sent_at is None or now - self._sent_at >= self.interval_seconds:
            self._sent_at = now
            return True
        return False

    def sent(self) -> None:
        """An event of this job went out (e.g. a stage change): the next step waits after it."""
        self._sent_at = self._clock()


@dataclass
class JobProgress:
    """One job's progress in denoising steps: ``images`` x ``steps`` in all. ``step``/``steps``
    of a report are those of the pipeline call in hand; ``percent`` covers the whole job."""

    execution_id: str
    owner: str
    images: int
    steps: int
    throttle: StepThrottle
    images_finished: int = 0
    steps_after_this_call: int = 0
    """Denoising steps of the later calls up to this job's last one (set before each call)."""
    _images_in_call: int = 0  # of this job, in the call in hand and not yet finished
    _call_fraction: float = 0.0  # how far the call in hand is, 0 to 1

    def started(self) -> Progress:
        return Progress(step=0, steps=self.steps, percent=0.0, unit="steps")

    def at_step(
        self, step: DenoisingStep, images_in_call: int, seconds_per_step: float | None
    ) -> Progress:
        self._images_in_call = images_in_call
        self._call_fraction = min(step.step / max(step.steps, 1), 1.0)
        eta = None
        if seconds_per_step is not None:
            remaining = max(step.steps - step.step, 0) + self.steps_after_this_call
            eta = round(remaining * seconds_per_step, 2)
        return Progress(
            step=min(step.step, step.steps),
            steps=max(step.steps, 1),
            percent=self._percent(),
            unit="steps",
            eta_seconds=eta,
        )

    def image_finished(self) -> Progress:
        """An image is stored (or has failed): it counts as all its steps done."""
        self.images_finished = min(self.images_finished + 1, self.images)
        self._images_in_call = max(self._images_in_call - 1, 0)
        return Progress(
            step=self.steps,
            steps=self.steps,
            percent=self._percent(),
            unit="steps",
            eta_seconds=0.0 if self.images_finished == self.images else None,
        )

    def _percent(self) -> float:
        """Of the whole job: finished images in full, those of the call in hand by its steps."""
        images_done = self.images_finished + self._images_in_call * self._call_fraction
        return round(min(100.0, 100.0 * images_done / max(self.images, 1)), 1)


class ProgressPublisher:
    """Puts progress details on the bus from a thread of its own. ``publish`` queues and returns
    at once; the thread sends what is queued, up to 10 entries per ``PutEvents``. Errors are
    logged and the events dropped: progress is advisory, the job's result comes another way."""

    def __init__(
        self,
        events: Any,
        *,
        bus_name: str,
        source: str,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self._events = events
        self.bus_name = bus_name
        self.source = source
        self._queue: queue.Queue[ImageGenerationProgressDetail | None] = queue.Queue(max_pending)
        self._pending = 0  # queued or being sent
        self._idle = threading.Condition()
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="progress-publisher", daemon=True)
        self._thread.start()

    def publish(self, detail: ImageGenerationProgressDetail) -> None:
        """Queue ``detail``; never blocks, never raises (a full queue drops it, logged)."""
        if self._closed:
            return
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(detail)
        except queue.Full:
            self._settle(1)
            self.dropped += 1
            if _worth_a_line(self.dropped - 1, self.dropped):
                logger.warning(
                    "progress queue full: dropped an event of %s (%d dropped so far)",
                    detail.execution_id,
                    self.dropped,
                )

    def flush(self, timeout: float) -> bool:
        """Wait until every queued event is sent or dropped; False if ``timeout`` ran out."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for up to ``timeout`` seconds) and stop the thread."""
        if self._closed:
            return
        self._closed = True
        self.flush(timeout)
        try:
            self._queue.put_nowait(None)
        except queue.Full:  # still busy after the timeout: the daemon thread dies with us
            return
        self._thread.join(timeout)

    def _settle(self, count: int) -> None:
        with self._idle:
            self._pending -= count
            if self._pending == 0:
                self._idle.notify_all()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < PUT_EVENTS_MAX_ENTRIES:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    stop = True
                    break
                batch.append(following)
            try:
                self._put(batch)
            except Exception as error:  # never ends the thread
                before, self.failed = self.failed, self.failed + len(batch)
                if _worth_a_line(before, self.failed):
                    logger.warning(
                        "putting %d progress events on %s failed (%d failed so far): %s",
                        len(batch),
                        self.bus_name,
                        self.failed,
                        error,
                    )
            finally:
                self._settle(len(batch))
            if stop:
                return

    def _put(self, details: Sequence[ImageGenerationProgressDetail]) -> None:
        response = self._events.put_events(
            Entries=[
                {
                    "Source": self.source,
                    "DetailType": IMAGE_GENERATION_PROGRESS,
                    "Detail": detail.model_dump_json(),
                    "EventBusName": self.bus_name,
                    "Time": detail.at,
                }
                for detail in details
            ]
        )
        failed = int(response.get("FailedEntryCount") or 0)
        self.sent += len(details) - failed
        if failed:
            self.failed += failed
            codes = sorted(
                {str(entry.get("ErrorCode")) for entry in response.get("Entries", [])} - {"None"}
            )
            logger.warning("%d of %d progress events were refused: %s", failed, len(details), codes)


def _worth_a_line(count_before: int, count_after: int) -> bool:
    """Log the first of a run of drops or failures, then one line per ``_LOG_EVERY``."""
    return count_before == 0 or count_before // _LOG_EVERY != count_after // _LOG_EVERY


@dataclass(frozen=True)
class CallShare:
    """A job's part in one pipeline call: how many of the call's images are its own."""

    job: JobProgress
    images_in_call: int


class ProgressReporter:
    """What the worker calls: a job accepted, each denoising step of a call, an image stored or
    failed. Builds the details and hands them to the publisher; never raises."""

    def __init__(
        self,
        publisher: ProgressPublisher,
        *,
        interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.publisher = publisher
        self.interval_seconds = interval_seconds
        self._clock = clock

    def job_started(
        self, execution_id: str, owner: str, *, images: int, steps: int
    ) -> JobProgress | None:
        """Track a job just accepted and publish its "generating" stage (step 0)."""
        try:
            job = JobProgress(
                execution_id=execution_id,
                owner=owner,
                images=images,
                steps=max(steps, 1),
                throttle=StepThrottle(self.interval_seconds, self._clock),
            )
            self._publish(job, Stage.GENERATING, job.started())
            job.throttle.sent()
        except Exception:
            logger.exception("progress of job %s cannot be reported", execution_id)
            return None
        return job

    def observer(self, shares: Sequence[CallShare]) -> StepObserver:
        """The step observer of one pipeline call made of ``shares``."""
        call_started = self._clock()

        def on_step(step: DenoisingStep) -> None:
            elapsed = self._clock() - call_started
            seconds_per_step = elapsed / step.step if step.step > 0 else None
            last = step.step >= step.steps
            for share in shares:
                try:
                    if share.job.throttle.admit(last=last):
                        progress = share.job.at_step(step, share.images_in_call, seconds_per_step)
                        self._publish(share.job, Stage.GENERATING, progress)
                except Exception:
                    logger.exception(
                        "progress of job %s cannot be reported", share.job.execution_id
                    )

        return on_step

    def image_finished(self, job: JobProgress, outcome: ImageOutcome) -> None:
        """An image is stored (or failed): publish "storing" with its outcome."""
        try:
            self._publish(job, Stage.STORING, job.image_finished(), outcome)
            job.throttle.sent()
        except Exception:
            logger.exception("progress of job %s cannot be reported", job.execution_id)

    def flush(self, timeout: float) -> bool:
        return self.publisher.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self.publisher.close(timeout)

    def _publish(
        self,
        job: JobProgress,
        stage: Stage,
        progress: Progress,
        image: ImageOutcome | None = None,
    ) -> None:
        self.publisher.publish(
            ImageGenerationProgressDetail(
                execution_id=job.execution_id,
                owner=job.owner,
                stage=stage,
                backend=Backend.GPU,
                progress=progress,
                image=image,
                at=datetime.now(UTC),
            )
        )
