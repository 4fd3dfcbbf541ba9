"""The GPU worker as its own process, as it runs on ECS or EKS: `python -m gpu_service.worker`.

The local stack starts one (or more, or none) with the variables a task definition would set
(``GPU_QUEUE_URL``, ``IMAGES_BUCKET``, ``MODEL_ID``, the AWS endpoint and credentials, and
``progress_environment``: the bus and source its progress events go to), and knows
it is ready when it touches its ``LIVENESS_FILE`` (after its first poll of the queue, so after
the model has loaded). Its output goes to the console, each line prefixed with the worker's name.
Tests stop a worker gracefully (SIGTERM: it finishes the batch in hand) or kill it (SIGKILL: its
messages reappear on the queue after their visibility timeout).
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

ENGINE_TIME_LINE = re.compile(r"engine: (?P<images>\d+) images? in (?P<seconds>\d+(?:\.\d+)?) s")
"""A worker line reporting one pipeline call's seconds (``engine: 4 images in 0.132 s``)."""


PROGRESS_VARIABLES = ("EVENT_BUS_NAME", "EVENT_SOURCE")
"""Where a worker's progress events go: the bus and source the stack's functions publish with."""


def progress_environment(function_environments: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """``EVENT_BUS_NAME`` and ``EVENT_SOURCE`` as the stack's functions have them (the first
    function that has both), for the worker: its progress events reach the same bus and rules as
    theirs. Empty when no function has them (the worker then publishes no progress)."""
    for environment in function_environments:
        if all(environment.get(name) for name in PROGRESS_VARIABLES):
            return {name: environment[name] for name in PROGRESS_VARIABLES}
    return {}


class WorkerExitedError(RuntimeError):
    """The worker process ended before it was ready."""

    def __init__(self, name: str, returncode: int, last_lines: list[str]) -> None:
        tail = "\n".join(f"    {line}" for line in last_lines)
        super().__init__(
            f"{name} exited with status {returncode} before it was ready; its last lines:\n{tail}"
        )
        self.returncode = returncode
        self.last_lines = last_lines


class GpuWorkerProcess:
    """One `python -m gpu_service.worker` process and the thread that relays its output."""

    def __init__(
        self,
        name: str,
        environment: Mapping[str, str],
        liveness_file: Path,
        *,
        say: Callable[[str], None],
        on_engine_time: Callable[[float, float], None] | None = None,
    ) -> None:
        self.name = name
        self.liveness_file = liveness_file
        self._last_lines: collections.deque[str] = collections.deque(maxlen=40)
        self._lines_lock = threading.Lock()
        self._say = say
        self._on_engine_time = on_engine_time
        liveness_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gpu_service.worker"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**environment, "LIVENESS_FILE": str(liveness_file)},
        )
        self._reader = threading.Thread(target=self._relay, name=f"{name}-output", daemon=True)
        self._reader.start()

    @property
    def last_lines(self) -> list[str]:
        """The worker's last 40 lines of output, oldest first."""
        with self._lines_lock:
            return list(self._last_lines)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def _relay(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout as output:
            for raw in output:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with self._lines_lock:
                    self._last_lines.append(line)
                found = ENGINE_TIME_LINE.search(line)
                if found and self._on_engine_time is not None:
                    self._on_engine_time(time.perf_counter(), float(found.group("seconds")))
                self._say(f"[{self.name}] {line}")

    def wait_until_ready(self, timeout_s: float) -> None:
        """Return once the worker has polled the queue; WorkerExitedError if it ended first."""
        deadline = time.monotonic() + timeout_s
        while not self.liveness_file.exists():
            code = self.process.poll()
            if code is not None:
                self._reader.join(timeout=5)  # its last words explain why
                raise WorkerExitedError(self.name, code, self.last_lines)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} was not ready within {timeout_s:.0f} s")
            time.sleep(0.1)

    def request_stop(self) -> None:
        """SIGTERM: the worker finishes the batch in hand and hands back what it has not begun."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if the worker has not ended after ``timeout_s``."""
        self.request_stop()
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = self.kill()
        self._reader.join(timeout=5)
        return code

    def kill(self) -> int:
        """SIGKILL: the worker dies mid-work, as a lost spot instance or an OOM kill would."""
        if self.alive:
            self.process.kill()
        code = self.process.wait()
        self._reader.join(timeout=5)
        return code
