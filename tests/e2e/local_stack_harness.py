"""The local stack the end-to-end and browser tests share, and what a test asks of it.

The whole system on 127.0.0.1 (moto server executing the workflow, the API behind a real HTTP
server, Lambda functions in their own execution-environment processes, GPU workers as their own
processes with the tiny model, the Bedrock stand-in). moto's backends are process-wide, so one
stack runs in a process at a time: the suites share one, started once per pytest run
(``shared_stack`` in tests/conftest.py), with the union of what they need (``SHARED_PARAMETERS``).

Tests keep apart on it by owner: each test has its own API key (``Harness``), so its job list,
its jobs and its webhooks are its own. What the stack holds for all of them, each test sets for
itself and leaves as it found it: the GPU workers (``Harness.use_workers``), a function's setting
(``LocalStack.function_environment``). Every test starts on an idle stack: no execution running,
nothing left on the GPU queue (``SharedStack.wait_until_idle``).

Waits end on a positive signal, never on a stretch of silence: "exactly one event per job" is
checked once ReportJobEndingFunction has returned for each job (it is the last to publish for an
execution) and the result queue has been read to the end after that (``events_by_execution``).
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
import httpx

from imagegen.client import CONNECTION_LIMITS
from imagegen.local.stack import LocalStack, LocalStackOptions
from tests.endings import EndingsSeen

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}
EVENT_FOR_STATUS = {
    "SUCCEEDED": "Image Generated",
    "FAILED": "Image Generation Failed",
    "TIMED_OUT": "Image Generation Failed",
    "ABORTED": "Image Generation Cancelled",
}
SHARED_PARAMETERS = {
    # The sizes every suite asks for: small ones keep the tiny model quick, so the orchestration is
    # what is loaded; the template's own ones for the README's examples.
    "AllowedSizes": "128x128,256x256,512x512,768x768,1024x1024,1344x768,768x1344",
    "GpuDefaultSize": "128x128",
    # What `make run` gives offline (no Bedrock there): the README's examples run against it.
    # Tests that mean Bedrock (the local stand-in here) say "backend": "bedrock".
    "DefaultBackend": "gpu",
    "GpuJobTimeoutSeconds": "300",
    # The sample event validate_prompt_blocked_term.json is refused (test_cli.py).
    "BlockedPromptTerms": "forbidden-thing",
    # Webhook retries within seconds, and the dead-letter queue after 3 attempts.
    "WebhookRetryScheduleSeconds": "1",
    "WebhookDeliveryAttempts": "3",
}
FAST_REDELIVERY = {"VISIBILITY_TIMEOUT_SECONDS": "3", "HEARTBEAT_INTERVAL_SECONDS": "0.5"}
"""A dead worker's jobs come back after 3 s instead of a minute (every shared worker has it)."""
IDLE_TIMEOUT_S = 180.0


@dataclass
class SharedStack:
    """The one LocalStack of the run, and what its tests change on it."""

    stack: LocalStack
    endings: EndingsSeen
    worker_environment: dict[str, str] = field(default_factory=dict)
    """What the running GPU workers were started with, over the stack's own."""

    def wait_until_idle(self, timeout_s: float = IDLE_TIMEOUT_S) -> None:
        """No execution running, and the GPU queue empty: what every test starts from.

        A message left on the queue once no execution runs belongs to an ended job (one
        cancelled while it waited, say), which a worker would only drop: it is deleted (SQS
        allows one PurgeQueue a minute, too few here).
        """
        sfn = boto3.client("stepfunctions")
        assert self.stack.stack is not None
        [machine] = self.stack.stack.state_machines.values()
        until(
            lambda: (
                not sfn.list_executions(
                    stateMachineArn=machine, statusFilter="RUNNING", maxResults=1
                )["executions"]
            ),
            timeout_s,
            "the jobs of earlier tests to end",
        )
        queue_url = self.stack.stack.queues["GpuJobQueue"]
        sqs = boto3.client("sqs")

        def drained() -> bool:
            for message in sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", []):
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            # A message in a worker's hands, or a killed worker's, shows once visible again.
            return not (
                queue_depth(queue_url, visible=True) or queue_depth(queue_url, visible=False)
            )

        until(drained, timeout_s, "the GPU queue to hold nothing of ended jobs")


def start_shared_stack(parameters: Mapping[str, str], **options: Any) -> Iterator[SharedStack]:
    """Start the stack with ``SHARED_PARAMETERS`` and ``parameters`` over them, and no GPU worker
    yet (each test gets those it asks for: ``Harness.use_workers``)."""
    settings = LocalStackOptions(
        **{
            "api_port": 0,
            "bedrock": "fake",
            "gpu_workers": 0,
            "allow_loopback_webhooks": True,
            "worker_environment": dict(FAST_REDELIVERY),
            # Few execution environments per function: on a small machine, a burst of cold
            # starts in parallel costs more than waiting for a warm environment.
            "function_concurrency": 4,
            **options,
        },
        parameters={**SHARED_PARAMETERS, **parameters},
    )
    endings = EndingsSeen()
    with LocalStack(settings, say=lambda line: None) as stack:
        stack.add_invocation_listener(endings)
        yield SharedStack(stack, endings)


class Harness:
    """One test's view of the shared stack: its own owner (API key) and HTTP client."""

    def __init__(self, shared: SharedStack, api_key: str) -> None:
        self.shared = shared
        self.stack = shared.stack
        self.api_key = api_key
        self.headers = {"x-api-key": api_key, "Content-Type": "application/json"}
        self.http = httpx.Client(
            base_url=self.stack.api_url,
            headers=self.headers,
            timeout=60,
            limits=CONNECTION_LIMITS,
        )
        self.server_errors: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()
        self._workers_given: list[Any] = []

    def close(self) -> None:
        """After the test: workers it started, stopped or killed itself are not the ones the
        next test would be given, so that test gets fresh ones."""
        self.http.close()
        if self.stack.workers != self._workers_given:
            self.shared.worker_environment = {"": "workers changed by a test"}

    # --- The API ------------------------------------------------------------------------------

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
            time.sleep(0.2)
        running = sorted(set(execution_ids) - set(final))
        assert not running, f"{len(running)} jobs still running after {timeout_s} s: {running[:5]}"
        return final

    # --- Events -------------------------------------------------------------------------------

    def events_by_execution(self, execution_ids: list[str], timeout_s: float = 60) -> Any:
        """Every result event of these executions, once none can still come: their endings have
        been reported (ReportJobEndingFunction returned: every event of theirs is on the bus)
        and the result queue has been read to the end after that."""
        reported_by = self.shared.endings.wait_for(execution_ids, timeout_s)
        assert self.stack.wait_until_events_received(reported_by, timeout_s), (
            "the result queue was not read to its end"
        )
        by_id: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        wanted = set(execution_ids)
        for event in list(self.stack.events):
            execution_id = event["detail"]["execution_id"]
            if execution_id in wanted:
                by_id[execution_id].append(event)
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

    # --- The GPU workers and queues -----------------------------------------------------------

    def use_workers(self, count: int, **environment: str) -> None:
        """Exactly ``count`` GPU workers started with ``environment`` (over the stack's own) run
        from now on: those running are kept when they match, else stopped (SIGTERM: they finish
        what they hold) and replaced. The next test that asks for other workers gets them."""
        current = self.stack.workers
        matching = len(current) == count and all(worker.alive for worker in current)
        if matching and self.shared.worker_environment == environment:
            self._workers_given = current
            return
        for worker in current:
            self.stack.stop_worker(worker)
        self.shared.worker_environment = dict(environment)
        for _ in range(count):
            self.stack.start_worker(environment)
        self._workers_given = self.stack.workers

    def queue_url(self, logical_id: str) -> str:
        assert self.stack.stack is not None
        return self.stack.stack.queues[logical_id]

    def gpu_backlog(self) -> int:
        """Messages waiting on the GPU queue (what GPU_MAX_BACKLOG is compared with)."""
        return queue_depth(self.queue_url("GpuJobQueue"), visible=True)


def queue_depth(queue_url: str, *, visible: bool) -> int:
    name = "ApproximateNumberOfMessages" + ("" if visible else "NotVisible")
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=[name]
    )["Attributes"]
    return int(attributes[name])


def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def key_for(node_id: str) -> str:
    """An API key (the job owner) named after the test: its own on the stack."""
    return re.sub(r"[^A-Za-z0-9]+", "-", node_id.removeprefix("tests/")).strip("-")[-120:]
