"""The whole worker path against the engine alone: the measurement that
``scripts/measure_worker_path.py`` (on moto, the CPU) and ``python -m gpu_service.bench`` (on a GPU,
with the in-memory queue below) share. A development module: never in the runtime image.

A round of the worker path loads ``jobs`` one-image jobs on the queue, runs the real ``Worker``
(``run``: the pipeline, with its threads) until every task is answered, and counts images per
second of wall time. A round of the engine alone makes the same images in the same batches with
``Engine.generate_images`` and counts images per second of pipeline time. The two alternate, so
that drift on a shared machine touches both alike; the ratio of each pair is reported.

``latency_s`` is added before every AWS call of the worker (what real SQS, S3 and Step Functions
calls take, 10-30 ms, against about 1 ms in process).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from gpu_service.engine import Engine
from gpu_service.image_specs import ImageSpec
from gpu_service.settings import Settings
from gpu_service.stage_times import StageTotal
from gpu_service.worker import ImageMaker, Worker
from imagegen_common.models import GenerateRequest, GpuJobMessage, ImageSlot, Job

BUCKET = "imagegen-path-bench"
REPO_ROOT = Path(__file__).resolve().parents[1]


def gpu_state_definition(queue_url: str) -> str:
    """A state machine of one state: the workflow's own "Generate on GPU", sending to
    ``queue_url`` (from statemachine/generate_image.asl.json, so the worker meets the message
    and the timeouts the deployed workflow really uses). The worker tests run on it too."""
    workflow = json.loads((REPO_ROOT / "statemachine" / "generate_image.asl.json").read_text())
    state = dict(workflow["States"]["Generate on GPU"])
    state.pop("Catch", None)
    state.pop("Next", None)
    state["End"] = True
    state["Parameters"] = {**state["Parameters"], "QueueUrl": queue_url}
    return json.dumps({"StartAt": "Generate on GPU", "States": {"Generate on GPU": state}})


class Backing(Protocol):
    """Where a worker-path round's messages come from and its answers go (moto, or memory)."""

    def clients(self) -> tuple[Any, Any, Any]:
        """(sqs, s3, stepfunctions) for the worker, with the round's latency added."""

    def load(self, jobs: list[Job]) -> None:
        """Put one message per job on the queue, ready to receive."""

    def wait_answered(self, count: int, timeout_s: float) -> None:
        """Until ``count`` tasks of this round have been answered."""


def one_image_jobs(count: int, width: int, height: int, seed: int = 0) -> list[Job]:
    """``count`` one-image jobs of one size (so they share calls), with their own seeds."""
    jobs = []
    for index in range(count):
        job_id = f"bench-{uuid.uuid4().hex[:12]}"
        jobs.append(
            Job(
                job_id=job_id,
                owner="bench",
                submitted_at=datetime.now(UTC),
                request=GenerateRequest(prompt=f"a lighthouse at dawn, take {index}"),
                backend="gpu",
                width=width,
                height=height,
                bucket=BUCKET,
                images=[ImageSlot(index=0, seed=seed + index, s3_key=f"images/{job_id}/0.png")],
                gpu_timeout_seconds=900,
            )
        )
    return jobs


def specs_of(jobs: list[Job], settings: Settings) -> list[ImageSpec]:
    return [
        ImageSpec(
            prompt=job.request.prompt,
            seed=slot.seed,
            width=job.width or 0,
            height=job.height or 0,
            steps=settings.default_steps,
            guidance=settings.default_guidance,
        )
        for job in jobs
        for slot in job.images
    ]


def with_latency(client: Any, seconds: float) -> Any:
    """A boto3 client that sleeps ``seconds`` before each call (botocore's before-call event)."""
    if seconds > 0:

        def wait(**_: Any) -> None:
            time.sleep(seconds)

        client.meta.events.register("before-call", wait)  # every operation of the client
    return client


@dataclass
class PathResult:
    worker_images_per_second: list[float] = field(default_factory=list)
    """Of each worker round's whole wall time: from the worker's start (empty, its first
    receive still to come) to the last task answered."""
    steady_images_per_second: list[float] = field(default_factory=list)
    """Of each worker round from its first pipeline call on: the worker once its pipeline is
    full, as it runs on a queue with a backlog (the round's last store and report included)."""
    engine_images_per_second: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    steady_ratios: list[float] = field(default_factory=list)
    stages: dict[str, StageTotal] = field(default_factory=dict)
    """The worker rounds' stage times, summed over the rounds."""
    worker_seconds: float = 0.0

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def steady_ratio(self) -> float:
        return statistics.median(self.steady_ratios)


def measure(
    engine: Engine,
    settings: Settings,
    backing_for_round: Callable[[], Backing],
    *,
    worker_engine: ImageMaker | None = None,
    jobs: int,
    rounds: int,
    width: int,
    height: int,
    say: Callable[[str], None] = lambda line: None,
) -> PathResult:
    """``rounds`` pairs of rounds, worker path then engine alone (or the reverse, in turn).
    The engine alone is ``engine``, in this process; the worker's is ``worker_engine`` (an
    ``EngineProcess``, as the worker runs by default), or ``engine`` when not given."""
    result = PathResult()
    totals: dict[str, tuple[float, int]] = {}
    for index in range(rounds):
        order = ("worker", "engine") if index % 2 == 0 else ("engine", "worker")
        batch = one_image_jobs(jobs, width, height, seed=1000 * index)
        measured: dict[str, float] = {}
        for mode in order:
            if mode == "worker":
                backing = backing_for_round()
                seconds, steady, stages = _worker_round(
                    worker_engine or engine, settings, backing, batch
                )
                result.worker_seconds += seconds
                for stage, total in stages.items():
                    seconds_so_far, count = totals.get(stage, (0.0, 0))
                    totals[stage] = (seconds_so_far + total.seconds, count + total.count)
                measured[mode] = jobs / seconds
                measured["steady"] = jobs / steady
            else:
                measured[mode] = jobs / _engine_round(engine, settings, batch)
        result.worker_images_per_second.append(measured["worker"])
        result.steady_images_per_second.append(measured["steady"])
        result.engine_images_per_second.append(measured["engine"])
        result.ratios.append(measured["worker"] / measured["engine"])
        result.steady_ratios.append(measured["steady"] / measured["engine"])
        say(
            f"round {index + 1}/{rounds}: worker {measured['worker']:.2f} img/s "
            f"(steady {measured['steady']:.2f}), engine {measured['engine']:.2f} img/s, ratio "
            f"{result.ratios[-1]:.3f} (steady {result.steady_ratios[-1]:.3f})"
        )
    result.stages = {stage: StageTotal(s, c) for stage, (s, c) in sorted(totals.items())}
    return result


class _FirstCall:
    """The engine, noting when its first pipeline call began (the worker knows it as an engine:
    ``generate_images`` is all it calls)."""

    def __init__(self, engine: ImageMaker) -> None:
        self._engine = engine
        self.first: float | None = None

    def generate_images(self, specs: Any, on_step: Any = None) -> list[Any]:
        if self.first is None:
            self.first = time.perf_counter()
        if on_step is None:
            return self._engine.generate_images(specs)
        return self._engine.generate_images(specs, on_step)


def _worker_round(
    engine: ImageMaker, settings: Settings, backing: Backing, jobs: list[Job]
) -> tuple[float, float, dict[str, StageTotal]]:
    """(seconds from the worker's start, seconds from its first call, its stage times)."""
    sqs, s3, sfn = backing.clients()
    watched = _FirstCall(engine)
    worker = Worker(settings, watched, sqs=sqs, s3=s3, stepfunctions=sfn)
    backing.load(jobs)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="bench-worker")
    started = time.perf_counter()
    thread.start()
    try:
        backing.wait_answered(len(jobs), timeout_s=600)
        ended = time.perf_counter()
    finally:
        stop.set()
        thread.join(timeout=120)
    assert watched.first is not None
    return ended - started, ended - watched.first, worker.times.totals()


def _engine_round(engine: Engine, settings: Settings, jobs: list[Job]) -> float:
    specs = specs_of(jobs, settings)
    seconds = 0.0
    for start in range(0, len(specs), settings.max_batch):
        began = time.perf_counter()
        engine.generate_images(specs[start : start + settings.max_batch])
        seconds += time.perf_counter() - began
    return seconds


# --- In memory (the GPU benchmark: no moto on the GPU machine) --------------------------------


class MemoryBacking:
    """SQS, S3 and Step Functions in memory, each call ``latency_s`` long (a sleep, so the
    worker's threads wait as they would on the network)."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self._lock = threading.Condition()
        self._visible: list[dict[str, Any]] = []
        self.answered = 0

    def clients(self) -> tuple[Any, Any, Any]:
        return _MemorySqs(self), _MemoryS3(self), _MemoryStepFunctions(self)

    def load(self, jobs: list[Job]) -> None:
        with self._lock:
            for job in jobs:
                body = GpuJobMessage(task_token=f"token-{job.job_id}", job=job).model_dump_json()
                self._visible.append(
                    {
                        "MessageId": job.job_id,
                        "ReceiptHandle": f"rh-{job.job_id}",
                        "Body": body,
                        "Attributes": {"ApproximateReceiveCount": "1"},
                    }
                )

    def wait_answered(self, count: int, timeout_s: float) -> None:
        with self._lock:
            if not self._lock.wait_for(lambda: self.answered >= count, timeout_s):
                raise TimeoutError(f"{self.answered} of {count} tasks answered in {timeout_s} s")

    def take(self, count: int) -> list[dict[str, Any]]:
        with self._lock:
            taken, self._visible = self._visible[:count], self._visible[count:]
            return taken

    def answer(self) -> None:
        with self._lock:
            self.answered += 1
            self._lock.notify_all()

    def call(self) -> None:
        if self.latency_s > 0:
            time.sleep(self.latency_s)


class _MemorySqs:
    def __init__(self, backing: MemoryBacking) -> None:
        self._backing = backing

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self._backing.call()
        messages = self._backing.take(int(kwargs.get("MaxNumberOfMessages", 1)))
        if not messages and kwargs.get("WaitTimeSeconds"):
            time.sleep(0.05)  # a long poll on an empty queue, cut short
        return {"Messages": messages}

    def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self._backing.call()
        return {"Successful": [{"Id": entry["Id"]} for entry in kwargs["Entries"]]}

    def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        self._backing.call()
        return {"Successful": [{"Id": entry["Id"]} for entry in kwargs["Entries"]]}


class _MemoryS3:
    def __init__(self, backing: MemoryBacking) -> None:
        self._backing = backing

    def put_object(self, **_: Any) -> dict[str, Any]:
        self._backing.call()
        return {}


class _MemoryStepFunctions:
    def __init__(self, backing: MemoryBacking) -> None:
        self._backing = backing

    def send_task_heartbeat(self, **_: Any) -> dict[str, Any]:
        self._backing.call()
        return {}

    def send_task_success(self, **_: Any) -> dict[str, Any]:
        self._backing.call()
        self._backing.answer()
        return {}

    def send_task_failure(self, **_: Any) -> dict[str, Any]:
        self._backing.call()
        self._backing.answer()
        return {}
