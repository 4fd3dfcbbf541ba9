"""What reporting progress costs the GPU worker: the same batches with progress events on and off,
interleaved, side by side in one run, on the tiny random-weight model (CPU).

Each round hands the real ``gpu_service.worker.Worker`` the same jobs (``--jobs`` one-image jobs,
one pipeline call of ``--steps`` denoising steps at ``--size``) through ``poll_once``. SQS, S3 and
Step Functions are in-memory stand-ins that answer at once, so the rounds time the worker and its
engine, not moto. With progress on, the events go through a real boto3 EventBridge client to
moto's in-process EventBridge (``local_aws``) from the worker's background publisher, whose
CPU use competes with the pipeline on the same cores, as it would in a deployment. The modes
(off; on, one step event a second per job, the default; on, every step, no throttle) take turns
round by round, in a rotating order, so drift on a shared machine touches each alike.

Round time is ``poll_once`` alone: the events the publisher still holds when it returns are sent
before the next round (outside the timing; their wait is shown as "tail").

torch runs on ``--threads`` threads (default 1). On a shared 2-core machine, two OpenMP threads
spin against every other busy process: the same round took 25-50 s there instead of 3 s with
one thread, and the noise swamps what is measured. One thread also leaves the publisher a core,
as a GPU machine's CPU is mostly idle while the GPU denoises.

    .venv/bin/python scripts/measure_progress_overhead.py [--rounds 6] [--jobs 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import torch

from gpu_service.engine import Engine
from gpu_service.image_specs import DenoisingStep, StepObserver
from gpu_service.settings import Settings
from gpu_service.tiny_model import ensure_tiny_model
from gpu_service.worker import Worker
from imagegen.local.moto_aws import local_aws
from imagegen_common.models import GenerateRequest, GpuJobMessage, ImageSlot, Job

BUS = "imagegen-progress-measurement"
BUCKET = "imagegen-images-measurement"


class InMemorySqs:
    """Hands out the messages loaded for a round once, then nothing; deletes are counted."""

    def __init__(self) -> None:
        self.waiting: list[dict[str, Any]] = []
        self.deleted = 0

    def receive_message(self, **_: Any) -> dict[str, Any]:
        messages, self.waiting = self.waiting, []
        return {"Messages": messages}

    def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.deleted += len(kwargs["Entries"])
        return {"Successful": [{"Id": entry["Id"]} for entry in kwargs["Entries"]]}

    def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        return {"Successful": [{"Id": entry["Id"]} for entry in kwargs["Entries"]]}


class InMemoryS3:
    def __init__(self) -> None:
        self.objects = 0

    def put_object(self, **_: Any) -> dict[str, Any]:
        self.objects += 1
        return {}


class AcceptingStepFunctions:
    def __init__(self) -> None:
        self.successes = 0

    def send_task_heartbeat(self, **_: Any) -> dict[str, Any]:
        return {}

    def send_task_success(self, **_: Any) -> dict[str, Any]:
        self.successes += 1
        return {}

    def send_task_failure(self, **_: Any) -> dict[str, Any]:
        raise AssertionError("no job should fail in the measurement")


class CountingEvents:
    """The EventBridge client, counting its PutEvents calls and their seconds (on the
    publisher's thread)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls = 0
        self.seconds = 0.0

    def put_events(self, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._client.put_events(**kwargs)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - started


@dataclass
class Mode:
    name: str
    worker: Worker
    sqs: InMemorySqs
    events: CountingEvents | None
    seconds: list[float] = field(default_factory=list)
    tails: list[float] = field(default_factory=list)
    observer_calls: int = 0
    observer_seconds: float = 0.0

    def time_the_observer(self) -> None:
        """Time the step observer on the denoising thread: what reporting adds to each step."""
        reporter = self.worker.progress
        if reporter is None:
            return
        build = reporter.observer

        def timed(shares: Any) -> StepObserver:
            inner = build(shares)

            def on_step(step: DenoisingStep) -> None:
                started = time.perf_counter()
                inner(step)
                self.observer_seconds += time.perf_counter() - started
                self.observer_calls += 1

            return on_step

        reporter.observer = timed  # type: ignore[method-assign]


def _messages(round_number: int, jobs: int, width: int, height: int) -> list[dict[str, Any]]:
    """The round's jobs: the same prompts and seeds each round, fresh ids."""
    messages = []
    for index in range(jobs):
        job_id = f"measure-{round_number}-{index}"
        job = Job(
            job_id=job_id,
            owner="apikey:measure",
            submitted_at=datetime.now(UTC),
            request=GenerateRequest(prompt=f"a quiet harbour at dawn, take {index}"),
            backend="gpu",
            width=width,
            height=height,
            bucket=BUCKET,
            images=[ImageSlot(index=0, seed=1000 + index, s3_key=f"images/{job_id}/0.png")],
        )
        body = GpuJobMessage(task_token=f"token-{job_id}", job=job).model_dump_json()
        messages.append(
            {
                "MessageId": job_id,
                "ReceiptHandle": f"receipt-{job_id}",
                "Body": body,
                "Attributes": {"ApproximateReceiveCount": "1"},
            }
        )
    return messages


def _rotations(names: list[str], rounds: int) -> Iterator[list[str]]:
    for round_number in range(rounds):
        shift = round_number % len(names)
        yield names[shift:] + names[:shift]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each mode")
    parser.add_argument("--jobs", type=int, default=8, help="one-image jobs per round (a batch)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    parser.add_argument("--size", default="128x128", help="WIDTHxHEIGHT of each image")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    width, height = (int(part) for part in args.size.split("x"))
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    for name in ("moto", "botocore", "gpu_service"):
        logging.getLogger(name).setLevel(logging.ERROR)

    base = {
        "model_id": str(ensure_tiny_model()),
        "device": "cpu",
        "dtype": "float32",
        "warmup": False,
        "default_width": width,
        "default_height": height,
        "default_steps": args.steps,
        "max_batch": max(args.jobs, 1),
        "max_messages": min(max(args.jobs, 1), 10),
        "receive_wait_seconds": 0,
        "gpu_queue_url": "in-memory",
        "images_bucket": BUCKET,
        "event_bus_name": BUS,
        "event_source": "imagegen.measure",
    }
    with local_aws():
        events_client = boto3.client("events", region_name="us-east-1")
        events_client.create_event_bus(Name=BUS)
        engine = Engine.load(Settings(_env_file=None, **base))
        torch.set_num_threads(args.threads)
        engine.run(torch.set_num_threads, args.threads)  # the pipeline's own thread too
        modes: dict[str, Mode] = {}
        for name, overrides in (
            ("off", {"progress_reporting": False}),
            ("on (1/s per job)", {"progress_reporting": True, "progress_interval_seconds": 1.0}),
            ("on (every step)", {"progress_reporting": True, "progress_interval_seconds": 0.0}),
        ):
            settings = Settings(_env_file=None, **{**base, **overrides})
            sqs = InMemorySqs()
            counting = CountingEvents(events_client) if settings.reports_progress else None
            worker = Worker(
                settings,
                engine,
                sqs=sqs,
                s3=InMemoryS3(),
                stepfunctions=AcceptingStepFunctions(),
                events=counting,
            )
            modes[name] = Mode(name, worker, sqs, counting)
            modes[name].time_the_observer()

        print(
            f"tiny model on CPU, {args.jobs} one-image jobs per round (one pipeline call), "
            f"{width}x{height}, {args.steps} steps, {args.threads} torch thread(s); "
            f"{args.rounds} rounds per mode, interleaved",
            flush=True,
        )
        for mode in modes.values():  # warm each path once, untimed
            mode.sqs.waiting = _messages(-1, args.jobs, width, height)
            mode.worker.poll_once()
            if mode.worker.progress is not None:
                mode.worker.progress.flush(30)
        sent_before = {
            name: m.worker.progress.publisher.sent if m.worker.progress else 0
            for name, m in modes.items()
        }
        calls_before = {name: m.events.calls if m.events else 0 for name, m in modes.items()}
        put_seconds_before = {
            name: m.events.seconds if m.events else 0 for name, m in modes.items()
        }
        for mode in modes.values():
            mode.observer_calls, mode.observer_seconds = 0, 0.0
        load_before = os.getloadavg()[0]
        for round_number, order in enumerate(_rotations(list(modes), args.rounds)):
            for name in order:
                mode = modes[name]
                mode.sqs.waiting = _messages(round_number, args.jobs, width, height)
                started = time.perf_counter()
                handled = mode.worker.poll_once()
                mode.seconds.append(time.perf_counter() - started)
                assert handled == args.jobs
                flushed = time.perf_counter()
                if mode.worker.progress is not None:
                    mode.worker.progress.flush(30)
                mode.tails.append(time.perf_counter() - flushed)

        load_after = os.getloadavg()[0]
        baseline = statistics.median(modes["off"].seconds) / args.jobs
        rows = []
        for name, mode in modes.items():
            images = args.jobs * len(mode.seconds)
            per_image = statistics.median(mode.seconds) / args.jobs
            publisher = mode.worker.progress.publisher if mode.worker.progress else None
            sent = (publisher.sent if publisher else 0) - sent_before[name]
            calls = (mode.events.calls if mode.events else 0) - calls_before[name]
            put_seconds = (mode.events.seconds if mode.events else 0) - put_seconds_before[name]
            observer_us = mode.observer_seconds / max(mode.observer_calls, 1) * 1e6
            rows.append(
                (
                    name,
                    f"{images / sum(mode.seconds):.2f}",
                    f"{per_image * 1000:.1f}",
                    f"{min(mode.seconds) / args.jobs * 1000:.1f}",
                    "-" if name == "off" else f"{(per_image - baseline) / baseline * 100:+.1f}",
                    str(sent),
                    f"{sent / images:.1f}",
                    str(calls),
                    f"{observer_us:.0f}" if mode.observer_calls else "-",
                    f"{put_seconds / len(mode.seconds) * 1000:.0f}",
                    f"{statistics.median(mode.tails) * 1000:.1f}",
                    str((publisher.failed + publisher.dropped) if publisher else 0),
                )
            )
            mode.worker.close()
        engine.close()

    header = (
        "mode",
        "images/s",
        "ms/image (median)",
        "ms/image (best)",
        "overhead %",
        "events sent",
        "events/image",
        "PutEvents calls",
        "observer µs/step",
        "PutEvents ms/round",
        "tail ms",
        "failed+dropped",
    )
    print(f"load average (1 min) {load_before:.1f} before the rounds, {load_after:.1f} after")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
