"""Webhook delivery latency on the local stack: from a job's result event to the receiver.

Starts the local stack (Bedrock stand-in, no GPU worker, --allow-loopback-webhooks) and a receiver
on 127.0.0.1, then runs ``--jobs`` jobs one after another, each with a webhook for its completed
event, and reports for each:

- ``event -> webhook``: from the moment the stack's result-event subscriber received the job's
  result event (ResultEventsQueue, fed by the same putEvents as WebhookDeliveryQueue) to the
  receiver getting the signed POST: the delivery path's own cost (rule -> SQS -> poller ->
  WebhookDeliveryFunction: table read, signing, POST);
- ``end -> webhook``: from the execution's stopDate (the workflow's last state, which emits the
  event, has ended) to the receiver getting it.

It prints median, p95 and max of each (warm: the first job, which cold-starts the functions, is
reported apart).

    .venv/bin/python scripts/measure_webhook_latency.py [--jobs 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from imagegen.local.stack import LocalStack, LocalStackOptions  # noqa: E402


class Receiver:
    """Records when each execution's first delivery arrived (perf_counter and wall clock)."""

    def __init__(self) -> None:
        self.arrived: dict[str, tuple[float, float]] = {}
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = (time.perf_counter(), time.time())
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                execution_id = json.loads(body)["data"]["execution_id"]
                with receiver.changed:
                    receiver.arrived.setdefault(execution_id, at)
                    receiver.changed.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def wait(self, execution_id: str, timeout_s: float) -> tuple[float, float]:
        with self.changed:
            if not self.changed.wait_for(lambda: execution_id in self.arrived, timeout_s):
                raise TimeoutError(f"no delivery for {execution_id} within {timeout_s} s")
            return self.arrived[execution_id]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(name: str, values_s: list[float]) -> str:
    ms = [value * 1000 for value in values_s]
    return (
        f"{name:<18} median {statistics.median(ms):7.1f} ms   p95 {percentile(ms, 0.95):7.1f} ms"
        f"   max {max(ms):7.1f} ms   (n={len(ms)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()

    import boto3
    import httpx

    receiver = Receiver()
    options = LocalStackOptions(
        api_port=0, bedrock="fake", gpu_workers=0, allow_loopback_webhooks=True
    )
    lines: list[str] = []
    with LocalStack(options, say=lines.append) as stack:
        sfn = boto3.client("stepfunctions")
        assert stack.stack is not None
        machine_arn = stack.stack.only("state_machines")
        api = httpx.Client(base_url=stack.api_url, headers={"x-api-key": "measure"}, timeout=60)
        from_event: list[float] = []
        from_end: list[float] = []
        for number in range(args.jobs + 1):
            response = api.post(
                "/generate",
                json={
                    "prompt": f"a lighthouse at dawn, take {number}",
                    "webhook": {"url": receiver.url, "events": ["completed"]},
                },
            )
            response.raise_for_status()
            execution_id = response.json()["execution_id"]
            arrived_perf, arrived_wall = receiver.wait(execution_id, 120)
            if stack.wait_for_event(execution_id, 30) is None:
                raise TimeoutError(f"no result event for {execution_id}")
            execution_arn = (
                machine_arn.replace(":stateMachine:", ":execution:") + ":" + execution_id
            )
            stop: datetime = sfn.describe_execution(executionArn=execution_arn)["stopDate"]
            event_latency = arrived_perf - stack.event_received_at[execution_id]
            end_latency = arrived_wall - stop.timestamp()
            if number == 0:
                print(
                    f"first job (cold functions): event -> webhook {event_latency * 1000:.1f} ms, "
                    f"end -> webhook {end_latency * 1000:.1f} ms"
                )
                continue
            from_event.append(event_latency)
            from_end.append(end_latency)
        api.close()
    print(f"{args.jobs} warm jobs, one at a time, local stack on 127.0.0.1:")
    print(summary("event -> webhook", from_event))
    print(summary("end -> webhook", from_end))
    receiver.server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
