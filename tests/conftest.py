"""Fixtures for every suite: no network but loopback, fake AWS credentials, a Lambda context, and
the one local stack the end-to-end and browser suites share (``shared_stack``, ``harness``)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
EVENTS_DIR = REPO_ROOT / "events"

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address: Any) -> bool:
    if isinstance(address, tuple) and address:
        host = str(address[0])
        return host in {"localhost", "::1"} or host.startswith("127.")
    return isinstance(address, str | bytes)  # AF_UNIX paths are local


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _is_loopback(address):
        raise RuntimeError(f"tests may not reach the network: connect to {address!r} blocked")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if not _is_loopback(address):
        raise RuntimeError(f"tests may not reach the network: connect to {address!r} blocked")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)


@pytest.fixture(autouse=True)
def _fake_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials and region for moto; nothing here can reach a real account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "ImageGen",
        "POWERTOOLS_SERVICE_NAME": "imagegen",
        "POWERTOOLS_DEV": "false",
        "HF_HUB_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(name, value)


@dataclass
class FakeLambdaContext:
    function_name: str = "test-function"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test-function"
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"
    log_group_name: str = "/aws/lambda/test-function"
    log_stream_name: str = "2026/11/25/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


def load_event(name: str) -> dict[str, Any]:
    """A sample event from events/, wherever pytest was started."""
    return json.loads((EVENTS_DIR / name).read_text())


@pytest.fixture
def event_loader() -> Any:
    return load_event


def import_function(directory: str, module: str = "app") -> Any:
    """Import ``functions/<directory>/<module>.py`` afresh, as a Lambda cold start would.

    Each call gives a new module object, so module-level settings and clients are built under
    the environment and moto mock active at that moment. The function's folder is first on
    ``sys.path`` during the import, as Lambda's task root is, so the module imports its sibling
    modules (``from executions import ...``) afresh too; they leave ``sys.modules`` afterwards,
    so that two functions' modules of the same name never meet.
    """
    from imagegen.local.function_import import import_function_module

    path = REPO_ROOT / "functions" / directory / f"{module}.py"
    return import_function_module(path, f"function_{directory}_{module}")


# --- The local stack the end-to-end and browser suites share ----------------------------------


@pytest.fixture(scope="session")
def webhook_receiver() -> Iterator[Any]:
    """A receiver on 127.0.0.1 for every webhook of the run; its /default path is the shared
    stack's WebhookUrl (where jobs without a webhook of their own are delivered)."""
    from tests.webhook_receiver import WebhookReceiver

    with WebhookReceiver([200]) as receiver:
        yield receiver


@pytest.fixture(scope="session")
def other_origin() -> Iterator[str]:
    """web/ served by a plain file server on another port: a page on another origin, which the
    shared stack allows through CORS (CorsAllowedOrigins)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class QuietFiles(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(QuietFiles, directory=str(REPO_ROOT / "web"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def shared_stack(
    webhook_receiver: Any, other_origin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The one local stack of the run (tests/e2e/local_stack_harness.py says what it holds),
    recorded as `imagegen local` records its stack, in a folder of its own, so the CLI
    (`imagegen invoke`, `imagegen webhook listen`) finds it and never a `make run` of this
    checkout."""
    from imagegen.local.running_stack import (
        STATE_DIR_VARIABLE,
        StackRecord,
        remove_record,
        write_record,
    )
    from tests.e2e.local_stack_harness import start_shared_stack

    parameters = {
        "WebhookUrl": webhook_receiver.url("/default"),
        "CorsAllowedOrigins": other_origin,
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STATE_DIR_VARIABLE, str(tmp_path_factory.mktemp("state")))
        for shared in start_shared_stack(parameters):
            stack = shared.stack
            record = StackRecord.now(
                aws_endpoint_url=stack.endpoint_url,
                api_url=stack.api_url,
                stack_name=stack.options.stack_name,
                region=stack.options.region,
                template=stack.options.template,
            )
            write_record(record)
            try:
                yield shared
            finally:
                remove_record(record)


def _workers_asked_for(item: pytest.Item) -> tuple[int, dict[str, Any]]:
    marker = item.get_closest_marker("gpu_workers")
    return (marker.args[0], dict(marker.kwargs)) if marker else (1, {})


@pytest.hookimpl(tryfirst=True)  # before -m selects by the marks set here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests on a shared moto last (the shared local stack's, the workflow suite's), those
    on the local stack grouped by the GPU workers they ask for.

    Last: moto is process-wide and a shared one stays open to the end of the run, so tests that
    open a moto of their own (the door's own tests, the deployer's) run before it opens.
    Grouped: no worker first (as the stack starts), then the default one, then the others, since
    starting a worker takes seconds (importing diffusers alone takes ~7 s here). Tests keep their
    order within a group.
    """

    def group(item: pytest.Item) -> tuple[int, str]:
        count, environment = _workers_asked_for(item)
        rank = 0 if count == 0 else 1 if (count, environment) == (1, {}) else 2
        return rank, repr(sorted(environment.items()))

    def shares_a_moto(item: pytest.Item) -> bool:
        return bool({"harness", "workflow_factory"} & set(item.fixturenames))

    on_the_stack = [item for item in items if shares_a_moto(item)]
    others = [item for item in items if not shares_a_moto(item)]
    items[:] = others + sorted(on_the_stack, key=group)
    # `make e2e` runs the tests on the shared local stack (-m shared_stack) and the others, which
    # start the processes, ports or moto they need, as two pytest runs side by side.
    for item in on_the_stack:
        item.add_marker(pytest.mark.shared_stack)


@pytest.fixture
def harness(shared_stack: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """This test's own owner on the shared stack, which is idle when the test starts, with the
    GPU workers its ``gpu_workers`` mark asks for (default: one, as the stack starts)."""
    from tests.e2e.local_stack_harness import Harness, key_for

    count, environment = _workers_asked_for(request.node)
    shared_stack.wait_until_idle()
    harness = Harness(shared_stack, key_for(request.node.nodeid))
    harness.use_workers(count, **environment)
    yield harness
    harness.close()
