"""The local Lambda runtime's execution environments: real child processes
(`imagegen.local.lambda_bootstrap`) running small handlers written here, one request at a time."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imagegen.local.lambda_runtime import (
    FunctionSpec,
    HandlerLoadError,
    ProcessLambdaRuntime,
)

HANDLER = """\
import os
import sys
import time

INVOCATIONS = 0
print("cold start of", os.environ["AWS_LAMBDA_FUNCTION_NAME"])


def lambda_handler(event, context):
    global INVOCATIONS
    INVOCATIONS += 1
    name = event.get("name", "")
    print("started", name)
    if "meet" in event:
        # Two invocations meet through a named pipe: each open blocks until the other's.
        mode = "w" if event.get("writer") else "r"
        with open(event["meet"], mode) as pipe:
            if mode == "w":
                pipe.write("hello")
            else:
                pipe.read()
    if "wait_for" in event:
        with open(event["wait_for"]) as pipe:
            pipe.read()
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("exit") is not None:
        sys.stdout.flush()
        os._exit(event["exit"])
    if event.get("raise"):
        raise LookupError(event["raise"])
    if event.get("unserializable"):
        return {"value": object()}
    print("finished", name)
    return {
        "pid": os.getpid(),
        "invocations": INVOCATIONS,
        "probe": os.environ.get("PROBE"),
        "parent_only": os.environ.get("PARENT_ONLY"),
        "function_name": context.function_name,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
"""


def make_spec(
    tmp_path: Path, source: str = HANDLER, timeout_s: int = 10, **variables: str
) -> FunctionSpec:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "app.py").write_text(source)
    return FunctionSpec(
        logical_id="ProbeFunction",
        code_dir=code,
        handler="app.lambda_handler",
        environment=variables,
        timeout_s=timeout_s,
    )


class LogLines:
    """The functions' output, with a wait for a line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    def wait_for(self, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not any(text in line for line in self.lines):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no line with {text!r} in {self.lines}"
                self._changed.wait(remaining)

    def index(self, text: str) -> int:
        with self._changed:
            return next(i for i, line in enumerate(self.lines) if text in line)


@pytest.fixture
def log() -> LogLines:
    return LogLines()


@pytest.fixture
def runtime(log: LogLines) -> Iterator[ProcessLambdaRuntime]:
    runtime = ProcessLambdaRuntime(log=log)
    try:
        yield runtime
    finally:
        runtime.close()


def wait_until_gone(pid: int, timeout_s: float = 10.0) -> None:
    """Until ``pid`` has exited (a zombie or reaped)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.02)


def test_an_environment_is_a_process_with_the_function_environment_only(
    tmp_path: Path, runtime: ProcessLambdaRuntime, log: LogLines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARENT_ONLY", "not for functions")
    spec = make_spec(tmp_path, PROBE="inside")

    first = runtime.invoke(spec, {"name": "one"}, request_id="req-1")
    second = runtime.invoke(spec, {"name": "two"})

    assert first["pid"] != os.getpid()
    assert first["probe"] == "inside"
    assert first["parent_only"] is None
    assert first["function_name"] == "ProbeFunction"
    assert first["request_id"] == "req-1"
    assert 0 < first["remaining_ms"] <= 10_000
    # The same warm environment serves the next request: one cold start.
    assert (second["pid"], second["invocations"]) == (first["pid"], 2)
    assert sum("cold start of ProbeFunction" in line for line in log.lines) == 1
    # What the handler prints is its log, not the protocol (relayed by a thread of its own).
    log.wait_for("started one")
    assert "started one" in log.lines


def test_concurrent_invocations_get_environments_of_their_own(
    tmp_path: Path, runtime: ProcessLambdaRuntime
) -> None:
    spec = make_spec(tmp_path)
    meeting = tmp_path / "meet"
    os.mkfifo(meeting)

    # Neither can finish unless the other runs at the same time, in another environment.
    with ThreadPoolExecutor(2) as pool:
        reader = pool.submit(runtime.invoke, spec, {"meet": str(meeting)})
        writer = pool.submit(runtime.invoke, spec, {"meet": str(meeting), "writer": True})
        results = [reader.result(timeout=30), writer.result(timeout=30)]

    assert results[0]["pid"] != results[1]["pid"]
    assert [result["invocations"] for result in results] == [1, 1]  # separate module state


def test_an_environment_serves_one_request_at_a_time(tmp_path: Path, log: LogLines) -> None:
    runtime = ProcessLambdaRuntime(log=log, max_environments=1)
    spec = make_spec(tmp_path)
    release = tmp_path / "release"
    os.mkfifo(release)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(runtime.invoke, spec, {"name": "A", "wait_for": str(release)})
            log.wait_for("started A")
            second = pool.submit(runtime.invoke, spec, {"name": "B"})
            with release.open("w") as pipe:  # lets A finish
                pipe.write("go")
            results = [first.result(timeout=30), second.result(timeout=30)]
    finally:
        runtime.close()

    # One environment: B waited for it and ran after A had finished.
    assert results[0]["pid"] == results[1]["pid"]
    assert [result["invocations"] for result in results] == [1, 2]
    assert log.index("finished A") < log.index("started B")


def test_a_handler_error_is_reported_as_lambda_reports_it(
    tmp_path: Path, runtime: ProcessLambdaRuntime
) -> None:
    spec = make_spec(tmp_path)

    payload, function_error = runtime.dispatch(spec, b'{"raise": "no such thing"}')
    body = json.loads(payload)

    assert function_error == "Unhandled"
    assert body["errorType"] == "LookupError"
    assert body["errorMessage"] == "no such thing"
    assert body["requestId"]
    assert all("lambda_bootstrap" not in frame for frame in body["stackTrace"])
    assert any("app.py" in frame for frame in body["stackTrace"])

    marshal, _ = runtime.dispatch(spec, b'{"unserializable": true}')
    assert json.loads(marshal)["errorType"] == "Runtime.MarshalError"
    # The environment survived both.
    assert runtime.invoke(spec, {})["invocations"] == 3


def test_an_environment_that_exits_fails_its_invocation_and_is_replaced(
    tmp_path: Path, runtime: ProcessLambdaRuntime
) -> None:
    spec = make_spec(tmp_path)
    before = runtime.invoke(spec, {})["pid"]

    payload, function_error = runtime.dispatch(spec, b'{"exit": 3}')
    after = runtime.invoke(spec, {})

    assert function_error == "Unhandled"
    body = json.loads(payload)
    assert body["errorType"] == "Runtime.ExitError"
    assert "Runtime exited with error: exit status 3" in body["errorMessage"]
    assert after["pid"] != before
    assert after["invocations"] == 1  # a new cold start


def test_an_environment_killed_while_idle_is_replaced_without_an_error(
    tmp_path: Path, runtime: ProcessLambdaRuntime
) -> None:
    spec = make_spec(tmp_path)
    pid = runtime.invoke(spec, {})["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until_gone(pid)

    result = runtime.invoke(spec, {})

    assert result["pid"] != pid
    assert result["invocations"] == 1


def test_an_environment_killed_mid_invocation_reports_the_signal(
    tmp_path: Path, runtime: ProcessLambdaRuntime, log: LogLines
) -> None:
    spec = make_spec(tmp_path)
    pid = runtime.invoke(spec, {})["pid"]
    release = tmp_path / "never"
    os.mkfifo(release)

    with ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(
            runtime.dispatch, spec, json.dumps({"name": "X", "wait_for": str(release)}).encode()
        )
        log.wait_for("started X")
        os.kill(pid, signal.SIGKILL)
        payload, function_error = stuck.result(timeout=30)

    assert function_error == "Unhandled"
    body = json.loads(payload)
    assert body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"].endswith("Runtime exited with error: signal: killed")


def test_the_function_timeout_kills_the_environment(
    tmp_path: Path, runtime: ProcessLambdaRuntime
) -> None:
    spec = make_spec(tmp_path, timeout_s=1)
    pid = runtime.invoke(spec, {})["pid"]

    payload, function_error = runtime.dispatch(spec, b'{"sleep": 60}')

    assert function_error == "Unhandled"
    assert json.loads(payload) == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": "Task timed out after 1 seconds",
        "requestId": json.loads(payload)["requestId"],
    }
    wait_until_gone(pid)
    assert runtime.invoke(spec, {})["pid"] != pid


def test_a_failed_cold_start_is_reported_and_retried(
    tmp_path: Path, runtime: ProcessLambdaRuntime, log: LogLines
) -> None:
    source = (
        "import os\nVALUE = os.environ['MISSING_SETTING']\n\n\n"
        "def lambda_handler(event, context):\n    return 1\n"
    )
    spec = make_spec(tmp_path, source)

    payload, function_error = runtime.dispatch(spec, b"{}")

    assert function_error == "Unhandled"
    body = json.loads(payload)
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "KeyError" in body["errorMessage"]
    assert "MISSING_SETTING" in body["errorMessage"]
    log.wait_for("MISSING_SETTING")  # the traceback, in its log (relayed by a thread)
    # The next invocation tries a cold start again (here it fails again).
    with pytest.raises(HandlerLoadError, match="MISSING_SETTING"):
        runtime.invoke(spec, {})


def test_close_stops_every_environment(tmp_path: Path, log: LogLines) -> None:
    runtime = ProcessLambdaRuntime(log=log)
    spec = make_spec(tmp_path)
    meeting = tmp_path / "meet"
    os.mkfifo(meeting)
    with ThreadPoolExecutor(2) as pool:
        pids = [
            future.result(timeout=30)["pid"]
            for future in [
                pool.submit(runtime.invoke, spec, {"meet": str(meeting)}),
                pool.submit(runtime.invoke, spec, {"meet": str(meeting), "writer": True}),
            ]
        ]

    runtime.close()

    for pid in pids:
        wait_until_gone(pid)
    with pytest.raises(RuntimeError, match="closed"):
        runtime.invoke(spec, {})
