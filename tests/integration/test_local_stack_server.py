"""The deployer against moto's server mode: every boto3 call is HTTP to 127.0.0.1, and the
state machine's Lambda tasks run in child-process environments, as in `imagegen local`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from imagegen.local.deploy import deploy_stack
from imagegen.local.lambda_runtime import ProcessLambdaRuntime
from imagegen.local.moto_server import MotoServer, PortInUseError, free_port, start_moto_server
from tests.unit.test_local_deploy import write_fixture


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    server = start_moto_server(free_port())
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("MOTO_PORT", str(server.port))
    try:
        yield server
    finally:
        server.stop()


def test_fixture_stack_runs_over_http_and_presigned_urls_download(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    runtime = ProcessLambdaRuntime({"AWS_ENDPOINT_URL": moto_server.endpoint_url})
    try:
        stack = deploy_stack(
            write_fixture(tmp_path), parameters={"Greeting": "Hey"}, runtime=runtime
        )
        sfn = boto3.client("stepfunctions")

        arn = sfn.start_execution(
            stateMachineArn=stack.only("state_machines"), name="over-http", input='{"name": "Ada"}'
        )["executionArn"]
        deadline = time.monotonic() + 20
        while (status := sfn.describe_execution(executionArn=arn)["status"]) == "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        runtime.close()

    assert status == "SUCCEEDED"
    messages = boto3.client("sqs").receive_message(
        QueueUrl=stack.only("queues"), WaitTimeSeconds=2
    )["Messages"]
    assert json.loads(messages[0]["Body"])["detail"]["message"] == "Hey, Ada"

    s3 = boto3.client("s3")
    s3.put_object(Bucket=stack.only("buckets"), Key="a.png", Body=b"\x89PNG-bytes")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": stack.only("buckets"), "Key": "a.png"}
    )
    assert url.startswith(moto_server.endpoint_url)
    assert httpx.get(url).content == b"\x89PNG-bytes"


def test_a_taken_port_is_a_clear_error(moto_server: MotoServer) -> None:
    with pytest.raises(PortInUseError, match=f"port {moto_server.port} .* already in use"):
        start_moto_server(moto_server.port)
