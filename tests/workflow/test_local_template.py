"""The real template.yaml deploys offline, and what the local stack reads from it is complete."""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import pytest

from imagegen.local.deploy import deploy_stack, load_sam_template

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "template.yaml"


@pytest.fixture(scope="module")
def sam() -> dict:
    return load_sam_template(TEMPLATE)


@pytest.mark.usefixtures("aws")
def test_real_template_deploys_with_every_function_bucket_queue_bus_and_machine(sam: dict) -> None:
    declared = {
        kind: {k for k, r in sam["Resources"].items() if r["Type"] == kind and "Condition" not in r}
        for kind in (
            "AWS::Serverless::Function",
            "AWS::S3::Bucket",
            "AWS::SQS::Queue",
            "AWS::Events::EventBus",
            "AWS::Serverless::StateMachine",
        )
    }
    stack = deploy_stack(TEMPLATE)
    definition = boto3.client("stepfunctions").describe_state_machine(
        stateMachineArn=stack.only("state_machines")
    )["definition"]

    assert set(stack.functions) == declared["AWS::Serverless::Function"]
    assert set(stack.buckets) == declared["AWS::S3::Bucket"]
    assert set(stack.queues) >= declared["AWS::SQS::Queue"]
    assert set(stack.event_buses) == declared["AWS::Events::EventBus"]
    assert set(stack.state_machines) == declared["AWS::Serverless::StateMachine"]
    for function in stack.functions.values():
        assert function.handler_path.is_file(), function
        assert function.layer_dirs, function
        assert all(value and "{" not in value for value in function.environment.values() if value)
    # every ${...} of the ASL was substituted, with the stack's own resources
    assert not re.findall(r"\$\{[^}]+\}", definition)
    for function in stack.functions.values():
        if function.logical_id != "ApiFunction" and function.function_arn in definition:
            break
    else:
        pytest.fail("no function ARN of the stack in the state machine definition")
    assert stack.queues["GpuJobQueue"].rsplit("/", 1)[-1] in definition
    api = stack.functions["ApiFunction"].environment
    assert api["STATE_MACHINE_ARN"] == stack.only("state_machines")
    # CommaDelimitedList defaults arrive joined, not split into characters
    assert api["ALLOWED_SIZES"].split(",")[0] == "512x512"
    assert {(r.method, r.resource) for r in stack.routes} >= {
        ("POST", "/generate"),
        ("GET", "/generate/{execution_id}"),
        ("DELETE", "/generate/{execution_id}"),
    }
    assert json.loads(definition)["StartAt"]


@pytest.mark.usefixtures("aws")
def test_parameter_overrides_reach_function_environments() -> None:
    stack = deploy_stack(
        TEMPLATE, parameters={"BlockedPromptTerms": "one,two", "PresignedUrlTtlSeconds": "60"}
    )
    validate = stack.functions["ValidatePromptFunction"].environment
    assert validate["BLOCKED_PROMPT_TERMS"] == "one,two"
    assert validate["PRESIGNED_URL_TTL_SECONDS"] == "60"
