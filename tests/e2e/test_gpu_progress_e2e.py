"""GPU job progress on the whole local stack: queue positions fall while jobs wait for the one GPU
worker, a job's denoising step moves up before it succeeds, and a job whose worker is killed
mid-job is redone and ends in a terminal stage (its progress is not left behind).

What travels: the worker's "Image Generation Progress" events (gpu_service.progress) on the
stack's bus -> RecordJobProgressFunction -> the jobs table -> GET /generate/{id} (stage,
queue_position, progress). The tiny model at 512x512 takes a fraction of a second per denoising
step here, so a job of 12 steps lasts long enough to be watched. Counts and waits are bounded;
loopback only.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.local_stack_harness import FAST_REDELIVERY, TERMINAL, Harness, local_stack, until

JOBS = 4
STEPS = 12
WORKER_ENVIRONMENT = {
    **FAST_REDELIVERY,
    "DEFAULT_STEPS": str(STEPS),
    # One job at a time: the others stay queued behind it and their positions fall one by one.
    "MAX_BATCH": "1",
    "MAX_MESSAGES": "1",
    # More step events than the default 1/s, so a poll sees steps move within a short job.
    "PROGRESS_INTERVAL_SECONDS": "0.3",
}
GPU_JOB = {"backend": "gpu", "width": 512, "height": 512}


@pytest.fixture(scope="module")
def stack() -> Iterator[Harness]:
    """The stack with no GPU worker yet; each test starts (and stops or kills) its own."""
    yield from local_stack(gpu_workers=0, worker_environment=dict(WORKER_ENVIRONMENT))


@dataclass
class Watched:
    """What the polls of one job saw, in order."""

    positions: list[int] = field(default_factory=list)  # queue_position while queued
    steps: list[int] = field(default_factory=list)  # progress.step while generating
    last: dict[str, Any] = field(default_factory=dict)


def _watch(stack: Harness, execution_ids: list[str], timeout_s: float) -> dict[str, Watched]:
    """Poll every job until all have ended (or ``timeout_s``), recording what each poll saw."""
    watched = {execution_id: Watched() for execution_id in execution_ids}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for execution_id, seen in watched.items():
            if seen.last.get("status") in TERMINAL:
                continue
            status = stack.status(execution_id)
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


def test_queue_positions_fall_and_steps_move_up(stack: Harness) -> None:
    execution_ids = [stack.submit({"prompt": f"queued {i}", **GPU_JOB}) for i in range(JOBS)]

    def all_queued() -> bool:
        return all(
            stack.status(execution_id).get("queue_position") is not None
            for execution_id in execution_ids
        )

    until(all_queued, 60, "every job queued with a position")
    positions = [stack.status(execution_id)["queue_position"] for execution_id in execution_ids]
    assert sorted(positions) == list(range(JOBS)), positions  # jobs ahead: 0, 1, 2, 3

    worker = stack.stack.start_worker()
    try:
        watched = _watch(stack, execution_ids, timeout_s=180)
    finally:
        stack.stack.stop_worker(worker)

    for execution_id, seen in watched.items():
        assert seen.last["status"] == "SUCCEEDED", (execution_id, seen.last)
        assert seen.last["stage"] == "succeeded"
        assert seen.positions == sorted(seen.positions, reverse=True), seen.positions  # never up
    last_in_line = watched[execution_ids[positions.index(JOBS - 1)]]
    assert min(last_in_line.positions) < JOBS - 1, last_in_line.positions  # it moved up the line
    assert any(_moved_up(seen.steps) for seen in watched.values()), {
        execution_id: seen.steps for execution_id, seen in watched.items()
    }
    assert not stack.server_errors


def test_a_job_whose_worker_is_killed_mid_job_is_redone_and_its_progress_ends(
    stack: Harness,
) -> None:
    first = stack.stack.start_worker()
    # Four images one call each: the job lasts several calls, so the kill lands inside it.
    execution_id = stack.submit({"prompt": "outlives its worker", "num_images": 4, **GPU_JOB})

    def generating() -> bool:
        status = stack.status(execution_id)
        return (
            status.get("stage") == "generating"
            and (status.get("progress") or {}).get("step", 0) > 0
        )

    until(generating, 90, "the job's steps to be reported")
    assert stack.stack.kill_worker(first) != 0
    stuck = stack.status(execution_id)
    assert stuck["status"] == "RUNNING" and stuck["stage"] in ("generating", "storing")

    second = stack.stack.start_worker()
    try:
        watched = _watch(stack, [execution_id], timeout_s=180)[execution_id]
    finally:
        stack.stack.stop_worker(second)

    assert watched.last["status"] == "SUCCEEDED", watched.last
    assert watched.last["stage"] == "succeeded"  # terminal: the progress did not stay behind
    assert len(watched.last["images"]) == 4
    final = stack.wait_until_ended([execution_id], timeout_s=10)
    stack.assert_one_matching_event_each(final)
    assert not stack.server_errors
