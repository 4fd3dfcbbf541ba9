"""Progress and the job list over real HTTP on the local stack (API server, Lambda processes, moto).

Many Bedrock jobs at once (the local stand-in): while they run, ``GET /generate/{id}`` shows their
stage and progress from the jobs table; once ended, ``GET /generate`` lists every one of them,
newest first, a page at a time. GPU jobs with no worker to take them wait in the queue with their
positions, and cancelling them ends them in the table too, whatever progress comes after.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.local_stack_harness import Harness, local_stack, until

BEDROCK_JOBS = 16
SUBMITTERS = 8
RUNNING_STAGES = {"queued", "generating", "signing"}


@pytest.fixture(scope="module")
def stack() -> Iterator[Harness]:
    # Few execution environments per function: on a small machine, a burst of cold starts in
    # parallel would outlast the runtime's cold-start limit; invocations wait for one instead.
    for harness in local_stack(gpu_workers=0, function_concurrency=3):
        warm_up = harness.submit({"prompt": "warm up"})  # every function's first cold start
        harness.wait_until_ended([warm_up], timeout_s=120)
        yield harness


def list_all(stack: Harness, **query: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    params = {"limit": "7", **query}
    for _ in range(20):
        response = stack.request(
            "GET", "/generate?" + "&".join(f"{k}={v}" for k, v in params.items())
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["jobs"]) <= 7
        jobs += page["jobs"]
        if page["next_token"] is None:
            return jobs
        params["next_token"] = page["next_token"]
    raise AssertionError("the list did not end within 20 pages")


def test_many_bedrock_jobs_show_progress_and_are_all_listed_newest_first(stack: Harness) -> None:
    observed: list[dict[str, Any]] = []

    def submit_and_watch(index: int) -> str:
        execution_id = stack.submit({"prompt": f"progress {index}", "num_images": 2})
        observed.append(stack.status(execution_id))  # at once: usually still running
        return execution_id

    with ThreadPoolExecutor(max_workers=SUBMITTERS) as pool:
        ids = list(pool.map(submit_and_watch, range(BEDROCK_JOBS)))

    final = stack.wait_until_ended(ids, timeout_s=240)
    assert collections.Counter(final.values()) == {"SUCCEEDED": BEDROCK_JOBS}
    running = [status for status in observed if status["status"] == "RUNNING"]
    for status in running:
        assert status["stage"] in RUNNING_STAGES, status
        assert status["backend"] in {None, "bedrock"} and status["submitted_at"]
        if status["progress"] is not None:
            assert status["progress"]["unit"] == "images" and status["progress"]["steps"] == 2
            assert len(status["images"]) == status["progress"]["step"] <= 2
    until(
        lambda: all(
            job["stage"] == "succeeded" for job in list_all(stack) if job["execution_id"] in ids
        ),
        60,
        "every ending recorded",
    )
    for execution_id in ids[:4]:
        done = stack.status(execution_id)
        assert done["stage"] == "succeeded" and len(done["images"]) == 2
        assert done["started_at"] and done["updated_at"] and done["cost"]["usd"] > 0

    listed = [job for job in list_all(stack) if job["execution_id"] in ids]
    assert sorted(job["execution_id"] for job in listed) == sorted(ids)
    submitted = [job["submitted_at"] for job in listed]
    assert submitted == sorted(submitted, reverse=True)
    succeeded = list_all(stack, status="SUCCEEDED")
    assert set(ids) <= {job["execution_id"] for job in succeeded}
    assert stack.server_errors == []


def test_queued_gpu_jobs_have_positions_and_end_cancelled(stack: Harness) -> None:
    ids = [stack.submit({"prompt": f"gpu {n}", "backend": "gpu"}) for n in range(3)]

    until(
        lambda: all(stack.status(i)["queue_position"] is not None for i in ids),
        60,
        "every GPU job in the queue",
    )
    positions = [stack.status(i)["queue_position"] for i in ids]
    assert sorted(positions) == [0, 1, 2]  # no worker: nothing else waits on this stack
    assert {stack.status(i)["stage"] for i in ids} == {"queued"}

    for execution_id in ids:
        response = stack.request("DELETE", f"/generate/{execution_id}")
        assert response.status_code == 202, response.text
    final = stack.wait_until_ended(ids, timeout_s=60)
    assert set(final.values()) == {"ABORTED"}
    until(  # the table's record, which the list reads (GET reads Step Functions' status)
        lambda: (
            {job["stage"] for job in list_all(stack) if job["execution_id"] in ids} == {"cancelled"}
        ),
        30,
        "every cancellation recorded",
    )
    for execution_id in ids:
        assert stack.status(execution_id)["queue_position"] is None
    stack.assert_one_matching_event_each(final)
    assert stack.server_errors == []
