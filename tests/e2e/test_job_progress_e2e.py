"""Progress and the job list over real HTTP on the local stack (API server, Lambda processes, moto).

Many Bedrock jobs at once (the local stand-in): while they run, ``GET /generate/{id}`` shows their
stage and progress from the jobs table; once ended, ``GET /generate`` lists every one of them,
newest first, a page at a time. GPU jobs with no worker to take them wait in the queue with their
positions, and cancelling them ends them in the table too, whatever progress comes after.
"""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.local_stack_harness import Harness, until

BEDROCK_JOBS = 16
SUBMITTERS = 8
RUNNING_STAGES = {"queued", "generating", "signing"}
# No GPU worker: GPU jobs stay queued with their positions.
pytestmark = pytest.mark.gpu_workers(0)


def list_all(harness: Harness, **query: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    params = {"limit": "7", **query}
    for _ in range(20):
        response = harness.request(
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


def test_many_bedrock_jobs_show_progress_and_are_all_listed_newest_first(harness: Harness) -> None:
    observed: list[dict[str, Any]] = []

    def submit_and_watch(index: int) -> str:
        execution_id = harness.submit(
            {"prompt": f"progress {index}", "backend": "bedrock", "num_images": 2}
        )
        observed.append(harness.status(execution_id))  # at once: usually still running
        return execution_id

    with ThreadPoolExecutor(max_workers=SUBMITTERS) as pool:
        ids = list(pool.map(submit_and_watch, range(BEDROCK_JOBS)))

    final = harness.wait_until_ended(ids, timeout_s=240)
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
            job["stage"] == "succeeded" for job in list_all(harness) if job["execution_id"] in ids
        ),
        60,
        "every ending recorded",
    )
    for execution_id in ids[:4]:
        done = harness.status(execution_id)
        assert done["stage"] == "succeeded" and len(done["images"]) == 2
        assert done["started_at"] and done["updated_at"] and done["cost"]["usd"] > 0

    listed = list_all(harness)  # this test's owner: its jobs, and only them
    assert sorted(job["execution_id"] for job in listed) == sorted(ids)
    submitted = [job["submitted_at"] for job in listed]
    assert submitted == sorted(submitted, reverse=True)
    succeeded = list_all(harness, status="SUCCEEDED")
    assert set(ids) <= {job["execution_id"] for job in succeeded}
    assert harness.server_errors == []


def test_queued_gpu_jobs_have_positions_and_end_cancelled(harness: Harness) -> None:
    ids = [harness.submit({"prompt": f"gpu {n}", "backend": "gpu"}) for n in range(3)]

    until(
        lambda: all(harness.status(i)["queue_position"] is not None for i in ids),
        60,
        "every GPU job in the queue",
    )
    positions = [harness.status(i)["queue_position"] for i in ids]
    assert sorted(positions) == [0, 1, 2]  # no worker, and the stack idle before: only these
    assert {harness.status(i)["stage"] for i in ids} == {"queued"}

    for execution_id in ids:
        response = harness.request("DELETE", f"/generate/{execution_id}")
        assert response.status_code == 202, response.text
    final = harness.wait_until_ended(ids, timeout_s=60)
    assert set(final.values()) == {"ABORTED"}
    until(  # the table's record, which the list reads (GET reads Step Functions' status)
        lambda: (
            {job["stage"] for job in list_all(harness) if job["execution_id"] in ids}
            == {"cancelled"}
        ),
        30,
        "every cancellation recorded",
    )
    for execution_id in ids:
        assert harness.status(execution_id)["queue_position"] is None
    harness.assert_one_matching_event_each(final)
    assert harness.server_errors == []
