"""moto's server through the one door (``local_aws(server=True)``): every boto3 call is HTTP to
127.0.0.1, the state machine's Lambda tasks run in child-process environments, as in `imagegen
local`; and on exit the server, its resources and moto's settings are gone."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from imagegen.local.deploy import deploy_stack
from imagegen.local.lambda_runtime import ProcessLambdaRuntime
from imagegen.local.moto_aws import LocalAws, local_aws
from imagegen.local.moto_server import PortInUseError
from tests.workflow.fixture_template import write_fixture


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalAws]:
    with local_aws(server=True) as aws:
        assert aws.endpoint_url is not None
        monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint_url)
        yield aws


def test_fixture_stack_runs_over_http_and_presigned_urls_download(
    moto_server: LocalAws, tmp_path: Path
) -> None:
    assert moto_server.endpoint_url is not None
    assert os.environ["MOTO_PORT"] == str(moto_server.port)  # where moto's interpreter calls
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
            assert time.monotonic() < deadline, "the execution did not end within 20 s"
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


def test_leaving_stops_the_server_and_forgets_its_resources(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MOTO_PORT", raising=False)
    with local_aws(server=True) as aws:
        assert aws.endpoint_url is not None
        boto3.client("s3", endpoint_url=aws.endpoint_url).create_bucket(Bucket="left-behind")

    assert "MOTO_PORT" not in os.environ
    with pytest.raises(httpx.ConnectError):
        httpx.get(aws.endpoint_url, timeout=5)
    with local_aws(server=True) as again:
        s3 = boto3.client("s3", endpoint_url=again.endpoint_url)
        assert s3.list_buckets()["Buckets"] == []


def test_a_taken_port_is_a_clear_error_and_leaves_moto_closed() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        taken = pytest.raises(PortInUseError, match=f"port {port} .* already in use")
        with taken, local_aws(server=True, port=port):
            pytest.fail("moto's server opened on a taken port")

    with local_aws() as aws:  # the failed start closed the door again
        assert aws.endpoint_url is None
