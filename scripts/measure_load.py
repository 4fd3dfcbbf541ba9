"""Many GPU jobs at once on the local stack: how many are accepted, succeed, and how long they take.

Starts the local stack in this process (moto server, API, Lambda execution environments, GPU
workers with the tiny model), submits `--jobs` GPU jobs at once from as many client threads, and
waits for every job's result event. Prints accepted / refused / 5xx counts, the final statuses, the
terminal events per job, and POST-to-event latency percentiles. Loopback only.

    .venv/bin/python scripts/measure_load.py [--jobs 100] [--workers 1] [--size 128x128]
"""

from __future__ import annotations

import argparse
import collections
import logging
import statistics
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx

from imagegen.local.stack import LocalStack, LocalStackOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1, help="GPU worker processes")
    parser.add_argument("--size", default="128x128", help="WIDTHxHEIGHT of each image")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait in all")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="execution environments per function"
    )
    args = parser.parse_args(argv)
    width, height = (int(part) for part in args.size.split("x"))
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    for name in ("moto", "werkzeug", "imagegen"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    options = LocalStackOptions(
        api_port=0,
        bedrock="fake",
        gpu_workers=args.workers,
        parameters={"LogLevel": "WARNING", "AllowedSizes": f"{args.size},512x512"},
        function_environment={"POWERTOOLS_METRICS_DISABLED": "true"},
    )
    if args.concurrency:
        options.function_concurrency = args.concurrency
    submitted_at: dict[str, float] = {}
    statuses: collections.Counter[int] = collections.Counter()
    refused: list[str] = []
    lock = threading.Lock()
    with LocalStack(options, say=lambda line: None) as stack:
        client = httpx.Client(base_url=stack.api_url, headers={"x-api-key": "load"}, timeout=60)

        def submit(index: int) -> None:
            body = {"prompt": f"load {index}", "backend": "gpu", "width": width, "height": height}
            started = time.perf_counter()
            try:
                response = client.post("/generate", json=body)
            except httpx.TransportError as error:
                with lock:
                    refused.append(type(error).__name__)
                return
            with lock:
                statuses[response.status_code] += 1
                if response.status_code == 202:
                    submitted_at[response.json()["execution_id"]] = started

        print(f"submitting {args.jobs} GPU jobs at once ({args.size}, {args.workers} worker(s))")
        burst_started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(submit, range(args.jobs)))
        print(f"all answered in {time.perf_counter() - burst_started:.1f} s")

        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            if all(job in stack.event_received_at for job in submitted_at):
                break
            time.sleep(0.2)
        time.sleep(3)  # a second event for a job would show up here
        events = collections.defaultdict(list)
        for event in stack.events:
            events[event["detail"]["execution_id"]].append(event["detail-type"])
        client.close()

    latencies = [
        stack.event_received_at[job] - started
        for job, started in submitted_at.items()
        if job in stack.event_received_at
    ]
    kinds = collections.Counter(tuple(events.get(job, [])) for job in submitted_at)
    print(f"HTTP statuses: {dict(statuses)}; refused or reset connections: {len(refused)}")
    print(f"accepted {len(submitted_at)}; with a result event {len(latencies)}")
    for kind, count in kinds.most_common():
        print(f"  {count:4d} jobs with events {list(kind)}")
    if len(latencies) >= 2:
        print(
            f"POST -> result event: p50 {statistics.median(latencies):.2f} s, "
            f"p95 {statistics.quantiles(latencies, n=20)[18]:.2f} s, max {max(latencies):.2f} s"
        )
    server_errors = sum(count for status, count in statuses.items() if status >= 500)
    ok = not refused and not server_errors and kinds == {("Image Generated",): args.jobs}
    print("result:", "every job succeeded with one event" if ok else "NOT every job succeeded")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
