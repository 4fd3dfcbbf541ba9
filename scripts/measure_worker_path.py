"""The GPU worker's whole path against its engine alone, on the tiny model (CPU), in one run.

Each round of the worker path starts ``--jobs`` executions of the workflow's real "Generate on GPU"
state in moto (in process, as the worker tests run it: real task tokens, a real queue and
bucket), then runs the real ``gpu_service.worker.Worker`` (its pipeline: intake, engine in its
own process, stores, reports, deletes, keep-alive) until every task is answered. moto's work
runs in the worker's process, on the host's side: it is the AWS calls' cost here, and more than
a real call costs the host (moto parses and answers each call in Python too). Each round of the
engine alone makes the same images in the same batches of ``--batch`` with
``Engine.generate_images``, in this process. The rounds alternate (``gpu_service.path_bench``).
``--aws-latency-ms`` is added before each AWS call of the worker: moto answers in about a
millisecond, real SQS, S3 and Step Functions in 10 to 30.

torch runs on ``--threads`` threads (default 1), in both engines: one core is the accelerator,
the other the host that receives, encodes, uploads and reports, as on a GPU machine whose CPU is
mostly idle while the GPU denoises; two OpenMP threads on a shared 2-core machine make the noise
swamp what is measured. "steady" counts from the worker's first pipeline call (a worker with a
backlog); "whole round" from its start, the first receive and acceptance included.

    .venv/bin/python scripts/measure_worker_path.py --steps 4 --aws-latency-ms 20
    .venv/bin/python scripts/measure_worker_path.py --steps 20
    .venv/bin/python scripts/measure_worker_path.py --steps 4 --aws-latency-ms 20 --sleeping-engine
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import threading
import time
import warnings
from typing import Any

import boto3
import torch

from gpu_service.engine import Engine
from gpu_service.engine_process import EngineProcess
from gpu_service.image_specs import ImageSpec
from gpu_service.path_bench import (
    BUCKET,
    PathResult,
    gpu_state_definition,
    measure,
    with_latency,
)
from gpu_service.settings import Settings
from gpu_service.tiny_model import ensure_tiny_model
from gpu_service.worker import aws_client_config
from imagegen.local.moto_aws import local_aws
from imagegen_common.models import Job

ROLE_ARN = "arn:aws:iam::123456789012:role/path-bench"


class MotoBacking:
    """A round's queue, bucket and tasks in moto, the worker's clients ``latency_s`` slower."""

    def __init__(
        self, settings: Settings, queue_url: str, machine_arn: str, latency_s: float
    ) -> None:
        self.settings = settings
        self.queue_url = queue_url
        self.machine_arn = machine_arn
        self.latency_s = latency_s
        self._answered = 0
        self._changed = threading.Condition()

    def clients(self) -> tuple[Any, Any, Any]:
        config = aws_client_config(self.settings)
        sfn = with_latency(boto3.client("stepfunctions", config=config), self.latency_s)

        def answered(**_: Any) -> None:
            with self._changed:
                self._answered += 1
                self._changed.notify_all()

        sfn.meta.events.register("after-call.sfn.SendTaskSuccess", answered)
        sfn.meta.events.register("after-call.sfn.SendTaskFailure", answered)
        return (
            with_latency(boto3.client("sqs", config=config), self.latency_s),
            with_latency(boto3.client("s3", config=config), self.latency_s),
            sfn,
        )

    def load(self, jobs: list[Job]) -> None:
        sfn, sqs = boto3.client("stepfunctions"), boto3.client("sqs")
        for job in jobs:
            sfn.start_execution(
                stateMachineArn=self.machine_arn,
                name=job.job_id,
                input=json.dumps({"job": job.model_dump(mode="json")}),
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # every execution has sent its message
            visible = sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]["ApproximateNumberOfMessages"]
            if int(visible) >= len(jobs):
                return
            time.sleep(0.05)
        raise TimeoutError("the executions did not send their messages")

    def wait_answered(self, count: int, timeout_s: float) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._answered >= count, timeout_s):
                raise TimeoutError(f"{self._answered} of {count} answered in {timeout_s} s")


class SleepingAccelerator:
    """``--sleeping-engine``: an accelerator that takes no CPU. Each call sleeps as long as the
    real engine took for a full batch (scaled by the images in the call) and returns images the
    real engine made; both rounds use it. What the ratio then measures is the orchestration
    alone: whether the worker keeps an accelerator busy, without the host's work slowing it
    down as it does when the accelerator is one of the same two CPU cores."""

    def __init__(self, engine: Engine, settings: Settings, batch: int) -> None:
        specs = [
            ImageSpec(
                f"a lighthouse, take {i}",
                i,
                settings.default_width,
                settings.default_height,
                settings.default_steps,
                settings.default_guidance,
            )
            for i in range(batch)
        ]
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            self._images = engine.generate_images(specs)
            timings.append(time.perf_counter() - started)
        self.seconds_per_image = statistics.median(timings) / batch

    def generate_images(self, specs: Any, on_step: Any = None) -> list[Any]:
        time.sleep(self.seconds_per_image * len(specs))
        return [self._images[index % len(self._images)] for index in range(len(specs))]


def report(result: PathResult, args: argparse.Namespace) -> str:
    worker = statistics.median(result.worker_images_per_second)
    steady = statistics.median(result.steady_images_per_second)
    engine = statistics.median(result.engine_images_per_second)
    lines = [
        ("an accelerator that sleeps as long as " if args.sleeping_engine else "")
        + f"tiny model on the CPU ({args.threads} torch thread(s)), {args.size}x{args.size}, "
        f"{args.steps} steps, batches of {args.batch}, {args.jobs} one-image jobs a round, "
        f"{args.rounds} rounds of each, {args.aws_latency_ms:g} ms added before each AWS call",
        "",
        "| | images/s (median) | rounds |",
        "|---|---|---|",
        f"| engine alone | {engine:.2f} | "
        + ", ".join(f"{v:.2f}" for v in result.engine_images_per_second)
        + " |",
        f"| worker path, steady (from its first call) | {steady:.2f} | "
        + ", ".join(f"{v:.2f}" for v in result.steady_images_per_second)
        + " |",
        f"| **ratio, steady** | **{result.steady_ratio:.3f}** | "
        + ", ".join(f"{v:.3f}" for v in result.steady_ratios)
        + " |",
        f"| worker path, whole round (from its start) | {worker:.2f} | "
        + ", ".join(f"{v:.2f}" for v in result.worker_images_per_second)
        + " |",
        f"| ratio, whole round | {result.ratio:.3f} | "
        + ", ".join(f"{v:.3f}" for v in result.ratios)
        + " |",
        "",
        f"Where the worker rounds' {result.worker_seconds:.1f} s went (summed across its "
        "threads, so stages overlap; the share is of the rounds' wall time):",
        "",
        "| stage | calls | seconds | ms each | share of wall time |",
        "|---|---|---|---|---|",
    ]
    for stage, total in result.stages.items():
        each = 1000 * total.seconds / total.count if total.count else 0.0
        share = 100 * total.seconds / result.worker_seconds
        lines.append(
            f"| {stage} | {total.count} | {total.seconds:.2f} | {each:.1f} | {share:.0f} % |"
        )
    return "\n".join(lines)


def moto_names() -> dict[str, str]:
    """The queue and the GPU state in moto (open), and the bucket."""
    sqs, s3, sfn = (boto3.client(name) for name in ("sqs", "s3", "stepfunctions"))
    queue_url = sqs.create_queue(QueueName="path-bench", Attributes={"VisibilityTimeout": "60"})[
        "QueueUrl"
    ]
    s3.create_bucket(Bucket=BUCKET)
    machine = sfn.create_state_machine(
        name="path-bench", definition=gpu_state_definition(queue_url), roleArn=ROLE_ARN
    )["stateMachineArn"]
    return {"queue_url": queue_url, "machine": machine}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--aws-latency-ms", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=96, help="one-image jobs a round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--sleeping-engine",
        action="store_true",
        help="both rounds on an accelerator that sleeps as long as the engine takes (no CPU)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    for name, value in {  # moto's; nothing here reaches an account
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    with local_aws():
        names = moto_names()
        settings = Settings(
            model_id=str(ensure_tiny_model()),
            device="cpu",
            dtype="float32",
            warmup=False,
            default_width=args.size,
            default_height=args.size,
            default_steps=args.steps,
            max_batch=args.batch,
            gpu_queue_url=names["queue_url"],
            images_bucket=BUCKET,
            receive_wait_seconds=1,
            progress_reporting=False,
            torch_threads=args.threads,
        )
        engine = Engine.load(settings)
        engine.warm_up(args.size, args.size, args.steps, settings.default_guidance)
        # The worker's engine as deployed: in a process of its own (ENGINE_PROCESS), warm.
        engine_process = EngineProcess.start(settings.model_copy(update={"warmup": True}))
        alone: Any = engine
        worker_engine: Any = engine_process
        if args.sleeping_engine:
            alone = worker_engine = SleepingAccelerator(engine, settings, args.batch)
        latency = args.aws_latency_ms / 1000
        try:
            result = measure(
                alone,
                settings,
                lambda: MotoBacking(settings, names["queue_url"], names["machine"], latency),
                worker_engine=worker_engine,
                jobs=args.jobs,
                rounds=args.rounds,
                width=args.size,
                height=args.size,
                say=lambda line: print(line, file=sys.stderr),
            )
        finally:
            engine.close()
            engine_process.close()
    print(report(result, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
