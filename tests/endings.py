"""The positive signal that nothing more will be published for an execution.

ReportJobEndingFunction receives Step Functions' "Execution Status Change" event of every ending
(SUCCEEDED, FAILED, TIMED_OUT, ABORTED) and is the last to publish for an execution: the workflow
put its own events before it ended, and this function puts the one it still owes, if any. Once it
has returned for an execution, every event of that execution is on the bus, and EventBridge put
each one in its targets' queues before ``PutEvents`` returned. Tests wait for that, then read the
queues to their end, instead of waiting for a stretch of silence.
"""

from __future__ import annotations

import threading
import time

from imagegen.local.lambda_runtime import Invocation

ENDING_FUNCTION = "ReportJobEndingFunction"


class EndingsSeen:
    """When ReportJobEndingFunction returned for each execution (its last publisher)."""

    def __init__(self) -> None:
        self._ended_at: dict[str, float] = {}
        self._changed = threading.Condition()

    def __call__(self, invocation: Invocation) -> None:
        if invocation.logical_id != ENDING_FUNCTION or not invocation.succeeded:
            return
        name = ((invocation.event or {}).get("detail") or {}).get("name")
        if isinstance(name, str):
            with self._changed:
                self._ended_at.setdefault(name, invocation.ended_at)
                self._changed.notify_all()

    def wait_for(self, execution_ids: list[str], timeout_s: float) -> float:
        """The latest of their reports' ends; fails naming those still without one."""
        with self._changed:
            self._changed.wait_for(
                lambda: all(e in self._ended_at for e in execution_ids), timeout_s
            )
            missing = [e for e in execution_ids if e not in self._ended_at]
            assert not missing, f"{ENDING_FUNCTION} did not report {len(missing)}: {missing[:5]}"
            return max((self._ended_at[e] for e in execution_ids), default=time.monotonic())
