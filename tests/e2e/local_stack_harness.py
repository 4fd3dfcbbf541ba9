"""A local stack for the reliability tests, and what they ask of it.

The whole system on 127.0.0.1 (moto server executing the workflow, the API behind a real HTTP
server, Lambda functions in their own execution-environment processes, GPU workers as their own
processes with the tiny model, the Bedrock stand-in). moto's backends are process-wide, so one
stack runs at a time: each test module keeps its stacks to itself.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import httpx

from imagegen.local.stack import LocalStack, LocalStackOptions

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}
EVENT_FOR_STATUS = {
    "SUCCEEDED": "Image Generated",
    "FAILED": "Image Generation Failed",
    "TIMED_OUT": "Image Generation Failed",
    "ABORTED": "Image Generation Cancelled",
}
HEADERS = {"x-api-key": "reliability-tests", "Content-Type": "application/json"}
# Small images keep the tiny model quick, so the orchestration is what is loaded.
PARAMETERS = {
    "AllowedSizes": "128x128,512x512,1024x1024",
    "GpuDefaultSize": "128x128",
    "GpuJobTimeoutSeconds": "300",
}
# A dead worker's jobs come back after 3 s instead of a minute.
FAST_REDELIVERY = {"VISIBILITY_TIMEOUT_SECONDS": "3", "HEARTBEAT_INTERVAL_SECONDS": "0.5"}


class Harness:
    """A started LocalStack and what the tests ask of it."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.http = httpx.Client(base_url=stack.api_url, headers=HEADERS, timeout=60)
        self.server_errors: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        response = self.http.request(method, path, json=body)
        if response.status_code >= 500:
            with self._lock:
                self.server_errors.append((f"{method} {path}", response.status_code, response.text))
        return response

    def submit(self, body: dict[str, Any]) -> str:
        response = self.request("POST", "/generate", body)
        assert response.status_code == 202, response.text
        return str(response.json()["execution_id"])

    def status(self, execution_id: str) -> dict[str, Any]:
        response = self.request("GET", f"/generate/{execution_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_until_ended(self, execution_ids: list[str], timeout_s: float) -> dict[str, str]:
        """Final status of each execution, read through the API; fails on one still running."""
        final: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while len(final) < len(execution_ids) and time.monotonic() < deadline:
            for execution_id in execution_ids:
                if execution_id not in final:
                    status = self.status(execution_id)["status"]
                    if status in TERMINAL:
                        final[execution_id] = status
            time.sleep(0.5)
        running = sorted(set(execution_ids) - set(final))
        assert not running, f"{len(running)} jobs still running after {timeout_s} s: {running[:5]}"
        return final

    def events_by_execution(self, execution_ids: list[str], quiet_s: float = 3.0) -> Any:
        """Result events per execution, once each has one and no more came for ``quiet_s``."""
        deadline = time.monotonic() + 60
        seen = -1
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            events = list(self.stack.events)
            if len(events) != seen:
                seen, quiet_since = len(events), time.monotonic()
            by_id = collections.defaultdict(list)
            for event in events:
                by_id[event["detail"]["execution_id"]].append(event)
            complete = all(by_id.get(execution_id) for execution_id in execution_ids)
            if complete and time.monotonic() - quiet_since >= quiet_s:
                return by_id
            time.sleep(0.2)
        return by_id

    def assert_one_matching_event_each(self, final: dict[str, str]) -> None:
        by_id = self.events_by_execution(list(final))
        for execution_id, status in final.items():
            kinds = [event["detail-type"] for event in by_id.get(execution_id, [])]
            if kinds == ["Image Generated"] and status == "ABORTED":
                # The stop landed after "Emit Image Generated" had put the event, before the
                # execution closed: the one event is out and no second one follows (see
                # ReportJobEndingFunction). Only that order may pair ABORTED with it.
                assert self.result_event_put_before_stop(execution_id), (execution_id, kinds)
                continue
            assert kinds == [EVENT_FOR_STATUS[status]], (execution_id, status, kinds)

    def result_event_put_before_stop(self, execution_id: str) -> bool:
        assert self.stack.stack is not None
        [machine_arn] = self.stack.stack.state_machines.values()
        arn = f"{machine_arn.replace(':stateMachine:', ':execution:', 1)}:{execution_id}"
        history = boto3.client("stepfunctions").get_execution_history(executionArn=arn)
        return any(
            event["type"] == "TaskSucceeded"
            and event.get("taskSucceededEventDetails", {}).get("resourceType") == "events"
            for event in history["events"]
        )

    def queue_url(self, logical_id: str) -> str:
        assert self.stack.stack is not None
        return self.stack.stack.queues[logical_id]

    def messages_in_flight(self) -> int:
        attributes = boto3.client("sqs").get_queue_attributes(
            QueueUrl=self.queue_url("GpuJobQueue"),
            AttributeNames=["ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessagesNotVisible"])


def local_stack(parameters: dict[str, str] | None = None, **options: Any) -> Iterator[Harness]:
    settings = LocalStackOptions(
        **{"api_port": 0, "bedrock": "fake", **options},
        parameters={**PARAMETERS, **(parameters or {})},
    )
    lines: list[str] = []
    with LocalStack(settings, say=lines.append) as stack:
        harness = Harness(stack)
        yield harness
        harness.http.close()


def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def gpu_backlog(harness: Harness) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=harness.queue_url("GpuJobQueue"), AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])
