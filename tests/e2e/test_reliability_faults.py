"""Faults: no worker for a while (with a full GPU backlog), a worker killed mid-job.

The promises of the README's "Guarantees" section (docs/guarantees.md), on the whole local stack:
every job ends, with exactly one result event matching its final status; a queued job keeps its
place and reports it; a job outlives its worker, and its progress ends with it; a backlog the
deadline cannot absorb is refused with 429. What travels for progress: the worker's "Image
Generation Progress" events (gpu_service.progress) on the stack's bus ->
RecordJobProgressFunction -> the jobs table -> GET /generate/{id} (stage, queue_position,
progress). Counts and waits are bounded; loopback only.
"""

from __future__ import annotations

import collections
import itertools
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from imagegen.local.stack import LocalStack, LocalStackOptions
from tests.e2e.local_stack_harness import FAST_REDELIVERY, TERMINAL, Harness, until

JOBS = 4
STEPS = 30
ONE_JOB_AT_A_TIME = {
    # One job at a time: the others stay queued behind it and their positions fall one by one.
    "MAX_BATCH": "1",
    "MAX_MESSAGES": "1",
    # More step events than the default 1/s, so a poll sees steps move within a short job.
    "PROGRESS_INTERVAL_SECONDS": "0.3",
}
# The tiny model at 256x256 takes tens of milliseconds per denoising step here, so a job of 30
# steps lasts long enough (about a second) to be watched.
GPU_JOB = {"backend": "gpu", "width": 256, "height": 256, "steps": STEPS}


@dataclass
class Watched:
    """What the polls of one job saw, in order."""

    positions: list[int] = field(default_factory=list)  # queue_position while queued
    steps: list[int] = field(default_factory=list)  # progress.step while generating
    last: dict[str, Any] = field(default_factory=dict)


def _watch(harness: Harness, execution_ids: list[str], timeout_s: float) -> dict[str, Watched]:
    """Poll every job until all have ended (or ``timeout_s``), recording what each poll saw."""
    watched = {execution_id: Watched() for execution_id in execution_ids}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for execution_id, seen in watched.items():
            if seen.last.get("status") in TERMINAL:
                continue
            status = harness.status(execution_id)
            seen.last = status
            if status.get("stage") == "queued" and status.get("queue_position") is not None:
                seen.positions.append(status["queue_position"])
            progress = status.get("progress") or {}
            if status.get("stage") == "generating" and progress.get("unit") == "steps":
                seen.steps.append(progress["step"])
        if all(seen.last.get("status") in TERMINAL for seen in watched.values()):
            break
        time.sleep(0.15)
    return watched


def _moved_up(steps: list[int]) -> bool:
    """Two polls of one call saw the step rise (a redone or later call starts again at 0)."""
    return any(0 < earlier < later for earlier, later in itertools.pairwise(steps))


@pytest.mark.gpu_workers(0)
def test_gpu_jobs_wait_at_zero_workers_up_to_the_backlog_then_a_late_worker_takes_them_in_line(
    harness: Harness,
) -> None:
    """Scale from zero, and what a client sees of it.

    With no worker, GPU jobs wait in the queue with their positions, for as long as it takes:
    longer than a worker's visibility timeout is not a dead worker. Past GpuMaxBacklog the API
    answers 429 with Retry-After, while Bedrock jobs are still accepted. A worker that starts
    late takes them one at a time: each job's position only falls, its denoising steps move up,
    and it ends with exactly one event.
    """
    # GpuMaxBacklog, set on ApiFunction for this test as `aws lambda
    # update-function-configuration` would.
    with harness.stack.function_environment("ApiFunction", GPU_MAX_BACKLOG=str(JOBS)):
        execution_ids = [harness.submit({"prompt": f"queued {i}", **GPU_JOB}) for i in range(JOBS)]
        until(
            lambda: all(harness.status(e).get("queue_position") is not None for e in execution_ids),
            60,
            "every job queued with a position",
        )
        positions = [harness.status(e)["queue_position"] for e in execution_ids]
        assert sorted(positions) == list(range(JOBS)), positions  # jobs ahead: 0, 1, 2, 3
        until(lambda: harness.gpu_backlog() >= JOBS, 30, "the jobs to reach the GPU queue")

        refused = harness.request("POST", "/generate", {"prompt": "one too many", **GPU_JOB})

        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["code"] == "TOO_MANY_REQUESTS"
        # Bedrock jobs do not wait on the GPU queue: still accepted.
        bedrock = harness.submit({"prompt": "not for the GPU", "backend": "bedrock"})

    # Longer than the worker's visibility timeout and many heartbeat intervals: under the old
    # heartbeat design these jobs would have been declared dead here.
    waited_until = time.monotonic() + 3 * float(FAST_REDELIVERY["VISIBILITY_TIMEOUT_SECONDS"])
    while time.monotonic() < waited_until:
        for execution_id in execution_ids:
            assert harness.status(execution_id)["status"] == "RUNNING"
        time.sleep(1)

    harness.stack.start_worker(ONE_JOB_AT_A_TIME)
    watched = _watch(harness, execution_ids, timeout_s=180)

    for execution_id, seen in watched.items():
        assert seen.last["status"] == "SUCCEEDED", (execution_id, seen.last)
        assert seen.last["stage"] == "succeeded"
        assert seen.positions == sorted(seen.positions, reverse=True), seen.positions  # never up
    last_in_line = watched[execution_ids[positions.index(JOBS - 1)]]
    assert min(last_in_line.positions) < JOBS - 1, last_in_line.positions  # it moved up the line
    assert any(_moved_up(seen.steps) for seen in watched.values()), {
        execution_id: seen.steps for execution_id, seen in watched.items()
    }
    final = harness.wait_until_ended([*execution_ids, bedrock], timeout_s=60)
    assert collections.Counter(final.values()) == {"SUCCEEDED": JOBS + 1}
    harness.assert_one_matching_event_each(final)
    assert not harness.server_errors


@pytest.mark.gpu_workers(0)
def test_a_worker_killed_mid_job_leaves_it_to_the_next_worker_and_its_progress_ends(
    harness: Harness,
) -> None:
    stack = harness.stack
    with pytest.raises(RuntimeError, match="another LocalStack is running"):
        LocalStack(LocalStackOptions(api_port=0, gpu_workers=0)).start()
    # Four images of 30 steps, one per call: the job lasts several calls, so the kill lands
    # inside it, after its steps have been reported.
    first = stack.start_worker(ONE_JOB_AT_A_TIME)
    execution_id = harness.submit({"prompt": "outlives its worker", **GPU_JOB, "num_images": 4})

    def generating() -> bool:
        status = harness.status(execution_id)
        return (
            status.get("stage") == "generating"
            and (status.get("progress") or {}).get("step", 0) > 0
        )

    until(generating, 90, "the job's steps to be reported")
    assert stack.kill_worker(first) == -signal.SIGKILL
    stuck = harness.status(execution_id)
    assert stuck["status"] == "RUNNING" and stuck["stage"] in ("generating", "storing")
    second = stack.start_worker(ONE_JOB_AT_A_TIME)

    final = harness.wait_until_ended([execution_id], timeout_s=180)

    assert final[execution_id] == "SUCCEEDED"
    done = harness.status(execution_id)
    assert done["stage"] == "succeeded"  # terminal: the progress did not stay behind
    assert len(done["images"]) == 4
    harness.assert_one_matching_event_each(final)
    assert stack.workers == [second]
    reported = re.compile(rf"job {execution_id} reported")
    assert not any(reported.search(line) for line in first.last_lines)
    assert any(reported.search(line) for line in second.last_lines)
    assert not harness.server_errors
