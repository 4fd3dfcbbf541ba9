"""The promises of the README's "Guarantees" section, held under load and faults on the local stack.

Every test runs the whole system on 127.0.0.1 (moto server executing the workflow, the API behind
a real HTTP server, Lambda functions in their own execution-environment processes, GPU workers as
their own processes with the tiny model, the Bedrock stand-in) and checks, for every job:
it ends (never left RUNNING), with exactly one result event consistent with its final status, and
no request got a 5xx. Counts and waits are bounded; nothing leaves the loopback interface.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import httpx
import pytest

from imagegen.local.stack import LocalStack, LocalStackOptions

pytestmark = pytest.mark.e2e

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
            assert kinds == [EVENT_FOR_STATUS[status]], (execution_id, status, kinds)

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
        api_port=0, bedrock="fake", parameters={**PARAMETERS, **(parameters or {})}, **options
    )
    lines: list[str] = []
    with LocalStack(settings, say=lines.append) as stack:
        harness = Harness(stack)
        yield harness
        harness.http.close()


@pytest.fixture(scope="module")
def one_worker() -> Iterator[Harness]:
    """The stack with one GPU worker, shared by the tests that leave it as they found it."""
    yield from local_stack(gpu_workers=1)


@pytest.fixture
def no_worker() -> Iterator[Harness]:
    """The stack with no GPU worker yet, and quick redelivery of a dead worker's jobs."""
    yield from local_stack(gpu_workers=0, worker_environment=dict(FAST_REDELIVERY))


def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_hundred_gpu_jobs_at_once_all_succeed(one_worker: Harness) -> None:
    submitted: list[str] = []
    refused: list[str] = []

    def submit(index: int) -> None:
        try:
            submitted.append(one_worker.submit({"prompt": f"load {index}", "backend": "gpu"}))
        except httpx.TransportError as error:  # refused, reset: what the old server did
            refused.append(repr(error))

    with ThreadPoolExecutor(max_workers=100) as pool:
        list(pool.map(submit, range(100)))

    assert refused == []
    assert len(submitted) == 100
    final = one_worker.wait_until_ended(submitted, timeout_s=400)
    assert collections.Counter(final.values()) == {"SUCCEEDED": 100}
    one_worker.assert_one_matching_event_each(final)
    assert one_worker.server_errors == []


def test_poison_messages_do_not_stop_the_worker(one_worker: Harness) -> None:
    sqs = boto3.client("sqs")
    queue_url = one_worker.queue_url("GpuJobQueue")
    poison = [
        "[" * 10_000 + "]" * 10_000,
        '{"task_token": "x", "job": ' + "9" * 5000 + "}",
        "not json at all",
        json.dumps([{"task_token": "a"}, {"task_token": "b"}]),
        json.dumps({"task_token": "no-such-task", "job": {"job_id": 1}}),
    ]
    for body in poison:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)

    execution_id = one_worker.submit({"prompt": "after the poison", "backend": "gpu"})

    final = one_worker.wait_until_ended([execution_id], timeout_s=120)
    assert final[execution_id] == "SUCCEEDED"
    assert all(worker.alive for worker in one_worker.stack.workers)
    one_worker.assert_one_matching_event_each(final)


@pytest.mark.parametrize("backend", ["gpu", "bedrock"])
def test_cancels_racing_the_work_leave_one_event_per_job(one_worker: Harness, backend: str) -> None:
    """DELETE lands anywhere from before validation to after the end; whatever wins, each job
    ends with exactly one event, and that event matches its final status."""
    delays = [0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.2, 2.0]
    execution_ids: list[str] = []
    answers: list[int] = []

    def submit_then_cancel(delay: float) -> None:
        execution_id = one_worker.submit(
            {"prompt": f"race {delay}", "backend": backend, "num_images": 2}
        )
        execution_ids.append(execution_id)
        time.sleep(delay)  # where in the job the DELETE lands is what this test varies
        answers.append(one_worker.request("DELETE", f"/generate/{execution_id}").status_code)
        # A second DELETE never sends a second event: 202 again while stopping, 409 once ended.
        answers.append(one_worker.request("DELETE", f"/generate/{execution_id}").status_code)

    with ThreadPoolExecutor(max_workers=len(delays)) as pool:
        list(pool.map(submit_then_cancel, delays))

    assert set(answers) <= {202, 409}, answers
    final = one_worker.wait_until_ended(execution_ids, timeout_s=120)
    assert set(final.values()) <= {"SUCCEEDED", "ABORTED"}, final
    one_worker.assert_one_matching_event_each(final)
    assert one_worker.server_errors == []


def test_jobs_wait_for_a_worker_that_starts_late(no_worker: Harness) -> None:
    """Scale from zero: waiting in the queue is not a dead worker, however long it lasts."""
    execution_ids = [
        no_worker.submit({"prompt": f"early {index}", "backend": "gpu"}) for index in range(5)
    ]
    # Longer than the worker's visibility timeout and many heartbeat intervals: under the old
    # heartbeat design these jobs would have been declared dead here.
    waited_until = time.monotonic() + 3 * float(FAST_REDELIVERY["VISIBILITY_TIMEOUT_SECONDS"])
    while time.monotonic() < waited_until:
        for execution_id in execution_ids:
            assert no_worker.status(execution_id)["status"] == "RUNNING"
        time.sleep(1)

    no_worker.stack.start_worker()

    final = no_worker.wait_until_ended(execution_ids, timeout_s=180)
    assert collections.Counter(final.values()) == {"SUCCEEDED": 5}
    no_worker.assert_one_matching_event_each(final)


def test_a_worker_killed_mid_batch_hands_its_jobs_to_another(no_worker: Harness) -> None:
    first = no_worker.stack.start_worker()
    # 512x512 makes the tiny model take seconds per image: the kill lands mid-batch.
    execution_id = no_worker.submit(
        {
            "prompt": "survives its worker",
            "backend": "gpu",
            "width": 512,
            "height": 512,
            "num_images": 2,
        }
    )
    until(lambda: no_worker.messages_in_flight() > 0, 60, "the worker to take the job")
    until(lambda: any("accepted" in line for line in first.last_lines), 30, "the job to start")

    assert no_worker.stack.kill_worker(first) != 0
    no_worker.stack.start_worker()

    final = no_worker.wait_until_ended([execution_id], timeout_s=180)
    assert final[execution_id] == "SUCCEEDED"
    no_worker.assert_one_matching_event_each(final)


@pytest.fixture
def small_backlog() -> Iterator[Harness]:
    """No GPU worker yet, and room for three waiting GPU jobs."""
    yield from local_stack(parameters={"GpuMaxBacklog": "3"}, gpu_workers=0)


def test_a_full_gpu_backlog_answers_429_with_retry_after(small_backlog: Harness) -> None:
    harness = small_backlog
    accepted = [
        harness.submit({"prompt": f"queued {index}", "backend": "gpu"}) for index in range(3)
    ]
    until(lambda: harness_backlog(harness) >= 3, 30, "the jobs to reach the GPU queue")

    refused = harness.request("POST", "/generate", {"prompt": "one too many", "backend": "gpu"})

    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"]["code"] == "TOO_MANY_REQUESTS"
    # Bedrock jobs do not wait on the GPU queue: still accepted.
    harness.submit({"prompt": "not for the GPU", "backend": "bedrock"})
    harness.stack.start_worker()
    final = harness.wait_until_ended(accepted, timeout_s=120)
    assert collections.Counter(final.values()) == {"SUCCEEDED": 3}


def harness_backlog(harness: Harness) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=harness.queue_url("GpuJobQueue"), AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])
