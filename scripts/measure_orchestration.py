"""Time from `POST /generate` to the result event on the local stack, and the orchestration share.

Starts the local stack (moto server and API in this process, the Lambda environments and the GPU
worker with the tiny model as child processes), submits `--runs` GPU jobs one after the other
through the HTTP API, and for each prints the time from the POST to the subscriber receiving
"Image Generated", the engine's own time (the pipeline calls) and the rest: orchestration (API,
Step Functions, Lambda tasks, SQS, S3, EventBridge, polling). The first run includes the
functions' cold starts; the summary gives p50/max with and without it.

The engine's time comes from the worker's log: a line ``engine: N images in S s`` per pipeline
call (``gpu_worker_process.ENGINE_TIME_LINE``). A worker that logs no such line leaves the
engine and orchestration columns out (only the total is measured then).

    .venv/bin/python scripts/measure_orchestration.py [--runs 10] [--size 512x512]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

from imagegen.client import ImagegenClient
from imagegen.local.moto_server import free_port
from imagegen.local.stack import LocalStack, LocalStackOptions

REPO_ROOT = Path(__file__).resolve().parent.parent


def _summary(label: str, values: list[float]) -> str:
    return f"{label:<22} p50 {statistics.median(values):6.3f} s   max {max(values):6.3f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--size", default="128x128", help="WIDTHxHEIGHT of each image")
    parser.add_argument("--template", type=Path, default=REPO_ROOT / "template.yaml")
    args = parser.parse_args(argv)
    width, height = (int(part) for part in args.size.split("x"))
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    for name in ("moto", "werkzeug", "imagegen.local.lambda_runtime"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    # Function logs and metrics would interleave with the table: keep warnings only.
    options = LocalStackOptions(
        template=args.template,
        api_port=free_port(),
        # The deployment allows 512x512 and up; a small image keeps the engine's share small.
        parameters={"LogLevel": "WARNING", "AllowedSizes": f"{args.size},512x512"},
        function_environment={"POWERTOOLS_METRICS_DISABLED": "true"},
    )
    rows: list[tuple[float, float, float]] = []
    with LocalStack(options, say=lambda line: None) as stack, ImagegenClient(stack.api_url) as api:
        print(f"local stack up; GPU worker model: {options.model_id or 'MODEL_ID or tiny model'}")
        print(f"{'run':>3}  {'POST->event':>11}  {'engine':>8}  {'orchestration':>13}  share")
        for run in range(1, args.runs + 1):
            request = {"prompt": f"run {run}", "backend": "gpu", "width": width, "height": height}
            started = time.perf_counter()
            execution_id = api.submit(request)["execution_id"]
            event = stack.wait_for_event(execution_id, timeout_s=120)
            if event is None or event.get("detail-type") != "Image Generated":
                print(f"run {run}: no Image Generated event: {event}", file=sys.stderr)
                return 1
            total = stack.event_received_at[execution_id] - started
            engine = stack.engine_times.seconds_between(started, started + total)
            rows.append((total, engine, total - engine))
            if stack.engine_times.calls:
                print(
                    f"{run:>3}  {total:10.3f}s  {engine:7.3f}s  {total - engine:12.3f}s  "
                    f"{(total - engine) / total:5.0%}"
                )
            else:
                print(f"{run:>3}  {total:10.3f}s  {'n/a':>8}  {'n/a':>13}")
        timed = bool(stack.engine_times.calls)
    if not timed:
        print("the GPU worker logged no engine times ('engine: N images in S s'): totals only")
    for label, subset in (("all runs", rows), ("without the first", rows[1:])):
        if not subset:
            continue
        print(f"-- {label} ({len(subset)}) --")
        print(_summary("POST -> result event", [r[0] for r in subset]))
        if timed:
            print(_summary("engine", [r[1] for r in subset]))
            print(_summary("orchestration", [r[2] for r in subset]))
            shares = [r[2] / r[0] for r in subset]
            print(f"{'orchestration share':<22} p50 {statistics.median(shares):6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
