"""The local API over HTTP: API Gateway's limits and answers, and load, on 127.0.0.1.

A small API of our own (echo, slow, broken routes) served by ``LocalApiServer`` with the
functions in child-process environments, as `imagegen local` runs them; the gateway responses
are the real template's.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegen.local.api_gateway import (
    ApiLimits,
    LocalApiGateway,
    LocalApiServer,
    load_gateway_responses,
)
from imagegen.local.deploy import ApiRoute, DeployedFunction, DeployedStack
from imagegen.local.lambda_runtime import ProcessLambdaRuntime

REPO_ROOT = Path(__file__).resolve().parents[2]
TEN_MB = 10 * 1024 * 1024

HANDLER = """\
import base64
import json
import time


def lambda_handler(event, context):
    if event["resource"] == "/slow":
        time.sleep(float(event["queryStringParameters"]["seconds"]))
    if event["resource"] == "/broken":
        return {"no": "statusCode"}
    body = event["body"] or ""
    if event["isBase64Encoded"]:
        body = base64.b64decode(body).decode()
    answer = {"method": event["httpMethod"], "length": len(body), "body": body[:100]}
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": json.dumps(answer)}
"""


@pytest.fixture(scope="module")
def echo_stack(tmp_path_factory: pytest.TempPathFactory) -> DeployedStack:
    code = tmp_path_factory.mktemp("echo")
    (code / "app.py").write_text(HANDLER)
    function = DeployedFunction(
        logical_id="EchoFunction",
        function_name="echo",
        function_arn="arn:aws:lambda:us-east-1:123456789012:function:echo",
        code_uri=code,
        handler="app.lambda_handler",
        environment={},
        timeout_s=20,
        memory_mb=128,
        region="us-east-1",
    )
    return DeployedStack(
        stack_name="api-test",
        region="us-east-1",
        template_path=REPO_ROOT / "template.yaml",
        resources={"Api": ("AWS::ApiGateway::RestApi", "abc123")},
        outputs={},
        buckets={},
        queues={},
        event_buses={},
        state_machines={},
        functions={"EchoFunction": function},
        routes=[
            ApiRoute("Api", "POST", "/echo", "EchoFunction"),
            ApiRoute("Api", "GET", "/echo", "EchoFunction"),
            ApiRoute("Api", "GET", "/slow", "EchoFunction"),
            ApiRoute("Api", "GET", "/broken", "EchoFunction"),
        ],
        stages={"Api": "v1"},
    )


def serve(
    stack: DeployedStack, limits: ApiLimits, *, max_environments: int | None = None
) -> Iterator[str]:
    # The template's API is ImageGenApi: its gateway responses answer for this one.
    responses = load_gateway_responses(REPO_ROOT / "template.yaml")["ImageGenApi"]
    capacity = {} if max_environments is None else {"max_environments": max_environments}
    runtime = ProcessLambdaRuntime(log=lambda line: None, **capacity)
    gateway = LocalApiGateway(stack, runtime, gateway_responses={"Api": responses})
    server = LocalApiServer(gateway, port=0, limits=limits, log=lambda line: None).start()
    try:
        yield server.url
    finally:
        server.stop()
        runtime.close()


@pytest.fixture(scope="module")
def impatient_api(echo_stack: DeployedStack) -> Iterator[str]:
    """API Gateway's limits, with the timeouts shortened to a second."""
    yield from serve(echo_stack, ApiLimits(integration_timeout_s=1.0, body_timeout_s=1.0))


@pytest.fixture(scope="module")
def api(echo_stack: DeployedStack) -> Iterator[str]:
    """API Gateway's limits as they are (a 29 s integration timeout)."""
    yield from serve(echo_stack, ApiLimits())


def raw_exchange(url: str, request: bytes, *, timeout_s: float = 10.0) -> bytes:
    """Send ``request`` as it is and read until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):  # a timeout here fails the test
            received += chunk
    return received


def status_and_json(response: bytes) -> tuple[int, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_requests_reach_the_function_and_answers_come_back(api: str) -> None:
    response = httpx.post(
        f"{api}/echo", content=b'{"a": 1}', headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 200
    assert response.json() == {"method": "POST", "length": 8, "body": '{"a": 1}'}
    assert response.headers["x-amzn-RequestId"]


def test_a_chunked_body_is_read_whole(api: str) -> None:

    def pieces() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    response = httpx.post(
        f"{api}/echo", content=pieces(), headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 200
    assert response.json()["length"] == 100_012


def test_a_body_over_10_mb_is_refused_from_its_content_length(api: str) -> None:
    request = (
        f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {TEN_MB + 1}\r\n\r\n"
    ).encode()

    status, body = status_and_json(raw_exchange(api, request))  # without sending the body

    assert status == 413
    assert body == {"error": {"code": "PAYLOAD_TOO_LARGE", "message": "Request Too Long"}}


def test_a_chunked_body_over_10_mb_is_refused_while_it_is_read(api: str) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"x" * (1024 * 1024)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    # One byte over the limit, and no last chunk: the answer cannot wait for the end.
    request = head + framed * 10 + b"1\r\nx\r\n"

    status, body = status_and_json(raw_exchange(api, request))

    assert status == 413
    assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_a_body_that_stops_arriving_is_answered_and_closed(impatient_api: str) -> None:
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10

    # raw_exchange's socket timeout (10 s) bounds the wait; the server's is 1 s here.
    status, body = status_and_json(raw_exchange(impatient_api, request))

    assert status == 408
    assert body["error"]["code"] == "REQUEST_TIMEOUT"


def test_a_function_slower_than_the_integration_timeout_gets_504(impatient_api: str) -> None:
    response = httpx.get(f"{impatient_api}/slow", params={"seconds": "3"}, timeout=20)

    assert response.status_code == 504
    assert response.json() == {
        "error": {"code": "GATEWAY_TIMEOUT", "message": "Endpoint request timed out"}
    }


@pytest.fixture(scope="module")
def one_environment_api(echo_stack: DeployedStack) -> Iterator[str]:
    """One environment per function (the local cap), a 1 s integration timeout, 2 s in line."""
    limits = ApiLimits(integration_timeout_s=1.0, queue_timeout_s=2.0)
    yield from serve(echo_stack, limits, max_environments=1)


def test_the_integration_timeout_counts_from_the_functions_turn(
    one_environment_api: str,
) -> None:
    # Three 0.6 s invocations through one environment: the last ends 1.8 s after it arrived,
    # past the 1 s timeout, but Lambda would have run it at once in an environment of its own.
    # The local cap is the stack's, not the caller's: each answers within its own second.
    with ThreadPoolExecutor(3) as pool:
        responses = list(
            pool.map(
                lambda _: httpx.get(
                    f"{one_environment_api}/slow", params={"seconds": "0.6"}, timeout=20
                ),
                range(3),
            )
        )

    assert [response.status_code for response in responses] == [200, 200, 200]


def test_a_request_that_never_gets_a_turn_gets_504(one_environment_api: str) -> None:
    # The first keeps the only environment for 4 s (504 after 1 s, running on); the second
    # waits in line past the 2 s the queue allows.
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(
            httpx.get, f"{one_environment_api}/slow", params={"seconds": "4"}, timeout=20
        )
        time.sleep(0.5)  # the slow one takes the environment first
        queued = httpx.get(f"{one_environment_api}/echo", timeout=20)

    assert slow.result().status_code == 504
    assert queued.status_code == 504
    assert queued.json()["error"]["code"] == "GATEWAY_TIMEOUT"


def test_a_malformed_function_response_gets_502(api: str) -> None:
    response = httpx.get(f"{api}/broken")

    assert response.status_code == 502
    assert response.json() == {
        "error": {"code": "INTERNAL_ERROR", "message": "Internal server error"}
    }


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/nowhere"), ("PUT", "/echo"), ("BREW", "/echo")]
)
def test_a_path_or_method_without_a_route_gets_the_templates_403(
    api: str, method: str, path: str
) -> None:
    response = httpx.request(method, f"{api}{path}")

    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {"code": "FORBIDDEN", "message": "Missing Authentication Token"}
    }


def test_100_clients_at_once_are_all_served(api: str) -> None:
    clients = 100
    start = threading.Barrier(clients)
    statuses: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        start.wait(timeout=30)
        try:
            # A new connection per client: all of them arrive at the listening socket at once.
            response = httpx.post(
                f"{api}/echo",
                content=json.dumps({"client": number}).encode(),
                headers={"Content-Type": "application/json"},
                timeout=60,
            )
        except BaseException as error:
            with lock:
                failures.append(error)
            return
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)

    assert failures == []
    assert statuses == [200] * clients
