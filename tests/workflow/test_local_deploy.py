"""The local stack's deployer on a small SAM template of our own, in moto (``local_aws``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from imagegen.local.deploy import DeployError, deploy_stack
from tests.workflow.fixture_template import FIXTURE_TEMPLATE, write_fixture


@pytest.fixture
def fixture_template(tmp_path: Path) -> Path:
    return write_fixture(tmp_path)


def run_execution(arn: str, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    sfn = boto3.client("stepfunctions")
    execution_arn = sfn.start_execution(stateMachineArn=arn, name=name, input=json.dumps(payload))[
        "executionArn"
    ]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        described = sfn.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING":
            return described  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"{name} still RUNNING")


@pytest.mark.usefixtures("aws")
def test_deploy_describes_every_resource_from_the_template(fixture_template: Path) -> None:
    stack = deploy_stack(fixture_template, parameters={"Greeting": "Hi"})

    assert set(stack.buckets) == {"ImagesBucket"}
    assert set(stack.queues) == {"ResultQueue"}
    assert stack.event_buses == {"EventsBus": "imagegen-local-events"}
    assert set(stack.state_machines) == {"Machine"}
    assert stack.outputs == {"MachineArn": stack.state_machines["Machine"]}
    assert set(stack.functions) == {"GreetFunction", "ApiFunction"}
    greet = stack.functions["GreetFunction"]
    assert greet.handler == "app.lambda_handler"
    assert greet.handler_path == fixture_template.parent / "functions" / "greet" / "app.py"
    assert greet.memory_mb == 256
    assert greet.timeout_s == 30
    assert greet.environment == {
        "POWERTOOLS_SERVICE_NAME": "fixture",
        "IMAGES_BUCKET": stack.buckets["ImagesBucket"],
        "GREETING": "Hi",
        "EVENT_BUS_NAME": "imagegen-local-events",
    }
    assert stack.functions["ApiFunction"].environment["STATE_MACHINE_ARN"] == stack.only(
        "state_machines"
    )
    assert {(r.method, r.resource, r.function_logical_id) for r in stack.routes} == {
        ("POST", "/hello", "ApiFunction"),
        ("GET", "/hello/{name}", "ApiFunction"),
    }
    assert stack.stages == {"ServerlessRestApi": "Prod"}
    boto3.client("s3").head_bucket(Bucket=stack.only("buckets"))


@pytest.mark.usefixtures("aws")
def test_state_machine_runs_with_substitutions_and_our_handler(fixture_template: Path) -> None:
    stack = deploy_stack(fixture_template, parameters={"Greeting": "Hi"})
    definition = boto3.client("stepfunctions").describe_state_machine(
        stateMachineArn=stack.only("state_machines")
    )["definition"]
    assert "${" not in definition
    assert stack.functions["GreetFunction"].function_arn in definition

    described = run_execution(stack.only("state_machines"), "ok", {"name": "Ada"})

    assert described["status"] == "SUCCEEDED"
    messages = boto3.client("sqs").receive_message(
        QueueUrl=stack.only("queues"), WaitTimeSeconds=2
    )["Messages"]
    detail = json.loads(messages[0]["Body"])["detail"]
    assert detail["message"] == "Hi, Ada"
    assert detail["function_name"] == stack.functions["GreetFunction"].function_name
    assert 0 < detail["remaining_ms"] <= 30_000
    assert detail["bus"] == "imagegen-local-events"


@pytest.mark.usefixtures("aws")
def test_handler_exception_class_name_is_the_error_catch_matches(fixture_template: Path) -> None:
    stack = deploy_stack(fixture_template)

    described = run_execution(stack.only("state_machines"), "no-name", {})

    assert described["status"] == "FAILED"
    assert described["error"] == "NoName"


@pytest.mark.usefixtures("aws")
def test_a_changed_environment_variable_in_a_template_copy_is_what_runs(tmp_path: Path) -> None:
    changed = FIXTURE_TEMPLATE.replace("GREETING: !Ref Greeting", "GREETING: Bonjour")
    stack = deploy_stack(write_fixture(tmp_path, changed))

    described = run_execution(stack.only("state_machines"), "changed", {"name": "Ada"})

    assert json.loads(described["output"])["FailedEntryCount"] == 0
    assert stack.invoke("GreetFunction", {"name": "Ada"})["message"] == "Bonjour, Ada"


@pytest.mark.usefixtures("aws")
def test_unknown_parameter_is_a_deploy_error(fixture_template: Path) -> None:
    with pytest.raises(DeployError, match="NoSuchParameter"):
        deploy_stack(fixture_template, parameters={"NoSuchParameter": "x"})


@pytest.mark.usefixtures("aws")
def test_invalid_sam_template_is_a_deploy_error(tmp_path: Path) -> None:
    broken = FIXTURE_TEMPLATE.replace("Handler: app.lambda_handler\n      MemorySize", "MemorySize")
    broken = broken.replace("Runtime: python3.13", "Runtime: [not, a, string]")
    with pytest.raises(DeployError, match="translation failed"):
        deploy_stack(write_fixture(tmp_path, broken))
