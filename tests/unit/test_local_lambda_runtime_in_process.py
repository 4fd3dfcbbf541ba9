"""The in-process Lambda runtime (the in-process moto mock's, and `imagegen invoke`'s): each
invocation gets the function's environment and a module instance of its own."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from imagegen.local.lambda_runtime import FunctionSpec, LambdaRuntime


def make_spec(tmp_path: Path, source: str, **environment: str) -> FunctionSpec:
    code_dir = tmp_path / f"fn{len(list(tmp_path.iterdir()))}"
    code_dir.mkdir()
    (code_dir / "app.py").write_text(source)
    return FunctionSpec(
        logical_id="ProbeFunction",
        code_dir=code_dir,
        handler="app.lambda_handler",
        environment=environment,
        timeout_s=5,
    )


PROBE_APP = """\
import os

AT_IMPORT = os.environ.get("PROBE")


def lambda_handler(event, context):
    return {
        "at_import": AT_IMPORT,
        "at_call": os.environ.get("PROBE"),
        "module": __name__,
        "request_id": context.aws_request_id,
        "arn": context.invoked_function_arn,
        "lambda_name": os.environ["AWS_LAMBDA_FUNCTION_NAME"],
    }
"""


def test_runtime_applies_the_function_environment_and_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE", "outside")
    spec = make_spec(tmp_path, PROBE_APP, PROBE="inside")

    result = LambdaRuntime().invoke(spec, {}, request_id="req-1")

    assert result["at_import"] == "inside"
    assert result["at_call"] == "inside"
    assert result["request_id"] == "req-1"
    assert result["lambda_name"] == "ProbeFunction"
    assert result["arn"].endswith(":function:ProbeFunction")
    assert os.environ["PROBE"] == "outside"
    assert "AWS_LAMBDA_FUNCTION_NAME" not in os.environ


def test_two_functions_named_app_are_separate_modules(tmp_path: Path) -> None:
    runtime = LambdaRuntime()
    first = runtime.invoke(make_spec(tmp_path, PROBE_APP, PROBE="one"), {})
    second = runtime.invoke(make_spec(tmp_path, PROBE_APP, PROBE="two"), {})

    assert (first["at_import"], second["at_import"]) == ("one", "two")
    assert first["module"] != second["module"]
    assert "app" not in first["module"].split(".")


def test_dispatch_reports_a_handler_error_as_lambda_does(tmp_path: Path) -> None:
    source = (
        "class ModelThrottledError(Exception):\n    pass\n\n\n"
        "def lambda_handler(event, context):\n    raise ModelThrottledError('slow down')\n"
    )
    payload, function_error = LambdaRuntime().dispatch(make_spec(tmp_path, source), b"{}")

    assert function_error == "Unhandled"
    body = json.loads(payload)
    assert body["errorType"] == "ModelThrottledError"
    assert body["errorMessage"] == "slow down"


def test_dispatch_reports_a_failed_cold_start(tmp_path: Path) -> None:
    source = (
        "import os\nVALUE = os.environ['MISSING_SETTING']\n\n\n"
        "def lambda_handler(event, context):\n    return 1\n"
    )
    payload, function_error = LambdaRuntime().dispatch(make_spec(tmp_path, source), b"{}")

    assert function_error == "Unhandled"
    body = json.loads(payload)
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "MISSING_SETTING" in body["errorMessage"]


BLOCKING_APP = """\
import os
import threading

STARTED = threading.Event()
RELEASE = threading.Event()


def lambda_handler(event, context):
    STARTED.set()
    RELEASE.wait(10)
    return os.environ.get("PROBE")
"""


def test_a_running_functions_environment_is_seen_by_its_thread_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE", "process")
    runtime = LambdaRuntime()
    spec = make_spec(tmp_path, BLOCKING_APP, PROBE="function")
    handler = runtime.load(spec)
    results: list[str] = []
    worker = threading.Thread(target=lambda: results.append(runtime.invoke(spec, {})))
    worker.start()
    assert handler.__globals__["STARTED"].wait(10)

    assert os.environ["PROBE"] == "process"  # while the handler runs in the other thread
    assert "AWS_LAMBDA_FUNCTION_NAME" not in os.environ
    handler.__globals__["RELEASE"].set()
    worker.join(10)
    assert results == ["function"]


IN_PROCESS_HANDLER = """\
import os

ACTIVE = 0
MOST_ACTIVE = 0


def lambda_handler(event, context):
    global ACTIVE, MOST_ACTIVE
    ACTIVE += 1
    MOST_ACTIVE = max(MOST_ACTIVE, ACTIVE)
    try:
        event["barrier"].wait(timeout=20)  # every invocation at once, or a BrokenBarrierError
        probe = os.environ.get("PROBE")
        return {"instance": id(globals()), "most_active": MOST_ACTIVE, "probe": probe}
    finally:
        ACTIVE -= 1
"""


def test_in_process_environments_are_module_instances_serving_one_request_each(
    tmp_path: Path,
) -> None:
    runtime = LambdaRuntime()
    spec = make_spec(tmp_path, IN_PROCESS_HANDLER, PROBE="inside")
    barrier = threading.Barrier(4)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(runtime.invoke, spec, {"barrier": barrier}) for _ in range(4)]
        results: list[dict[str, Any]] = [future.result(timeout=30) for future in futures]

    assert len({result["instance"] for result in results}) == 4
    assert all(result["most_active"] == 1 for result in results)
    assert all(result["probe"] == "inside" for result in results)
    assert "PROBE" not in os.environ
