"""Faults: no worker for a while, a worker killed mid-batch, a full GPU backlog.

The promises of the README's "Guarantees" section, on the whole local stack: every job ends, with
exactly one result event matching its final status; a job outlives its worker; a backlog the
deadline cannot absorb is refused with 429. Counts and waits are bounded; loopback only.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator

import pytest

from tests.e2e.local_stack_harness import (
    FAST_REDELIVERY,
    Harness,
    gpu_backlog,
    local_stack,
    until,
)


@pytest.fixture
def no_worker() -> Iterator[Harness]:
    """The stack with no GPU worker yet, and quick redelivery of a dead worker's jobs."""
    yield from local_stack(gpu_workers=0, worker_environment=dict(FAST_REDELIVERY))


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
    until(lambda: gpu_backlog(harness) >= 3, 30, "the jobs to reach the GPU queue")

    refused = harness.request("POST", "/generate", {"prompt": "one too many", "backend": "gpu"})

    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"]["code"] == "TOO_MANY_REQUESTS"
    # Bedrock jobs do not wait on the GPU queue: still accepted.
    harness.submit({"prompt": "not for the GPU", "backend": "bedrock"})
    harness.stack.start_worker()
    final = harness.wait_until_ended(accepted, timeout_s=120)
    assert collections.Counter(final.values()) == {"SUCCEEDED": 3}
