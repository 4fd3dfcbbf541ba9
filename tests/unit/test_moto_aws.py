"""The one door into moto (``local_aws``), in process: what it changes while open and puts back
when it closes; and the template adjustments on the way into moto's CloudFormation."""

from __future__ import annotations

import copy
import io
import json
import os
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest

from imagegen.local.deploy import deploy_stack
from imagegen.local.moto_aws import MOTO_CONFIG, adjust_template, local_aws, substitute_definition

# The moto modules whose classes (or module attributes) the door patches.
PATCHED_MODULES = [
    "moto.apigateway.models",
    "moto.awslambda_simple.models",
    "moto.events.models",
    "moto.stepfunctions.models",
    "moto.stepfunctions.responses",
    "moto.stepfunctions.parser.asl.eval.callback.callback",
    "moto.stepfunctions.parser.asl.parse.asl_parser",
    "moto.stepfunctions.parser.asl.utils.boto_client",
    "moto.stepfunctions.parser.backend.execution",
]


def moto_attributes() -> dict[tuple[str, str], Any]:
    """Every function and method of the patched modules and of their classes, as stored (no
    descriptors resolved), and of every loaded Step Functions interpreter module. (Their data,
    such as the instances moto tracks, changes with use.)"""
    names = set(PATCHED_MODULES) | {
        name for name in sys.modules if name.startswith("moto.stepfunctions.parser")
    }
    found: dict[tuple[str, str], Any] = {}
    for module_name in sorted(names):
        module = sys.modules.get(module_name)
        for name, value in vars(module or object()).items():
            if _is_code(value):
                found[(module_name, name)] = value
            if isinstance(value, type) and value.__module__ == module_name:
                for attribute, stored in vars(value).items():
                    if _is_code(stored):
                        found[(f"{module_name}.{name}", attribute)] = stored
    return found


def _is_code(value: Any) -> bool:
    return isinstance(value, types.FunctionType | classmethod | staticmethod | property)


def lambda_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def lambda_handler(event, context):\n    return event\n")
    return buffer.getvalue()


def test_leaving_puts_back_every_patched_attribute_and_moto_config() -> None:
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.core.config import default_user_config

    with local_aws():  # the first opening imports what the patches touch
        pass
    before = moto_attributes()
    config_before = copy.deepcopy(default_user_config)
    unpatched_invoke = LambdaSimpleBackend.invoke

    with local_aws():
        assert LambdaSimpleBackend.invoke is not unpatched_invoke
        assert default_user_config["stepfunctions"] == MOTO_CONFIG["stepfunctions"]
        changed = {key for key, value in moto_attributes().items() if before.get(key) is not value}

    after = moto_attributes()
    assert changed, "nothing of moto was patched while the door was open"
    assert {key for key in before if after.get(key) is not before[key]} == set()
    assert set(after) == set(before)
    assert default_user_config == config_before


def test_in_process_the_endpoint_variable_is_taken_away_while_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")

    with local_aws() as aws:
        assert aws.endpoint_url is None
        assert "AWS_ENDPOINT_URL" not in os.environ
        assert boto3.client("s3").list_buckets()["Buckets"] == []  # the mock answered

    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"


def test_the_door_opens_once_at_a_time() -> None:
    with local_aws(), pytest.raises(RuntimeError, match="already open"), local_aws():
        pytest.fail("a second door opened")

    with local_aws():  # the refused one left the first one's closing intact
        pass


def test_a_port_without_the_server_is_refused() -> None:
    with pytest.raises(ValueError, match="server=True"), local_aws(port=4566):
        pytest.fail("opened")


def test_deploying_without_the_door_says_what_to_open(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"local_aws\(\)"):
        deploy_stack(tmp_path / "template.yaml")


def test_registered_functions_run_our_dispatch_and_report_errors_as_lambda_does() -> None:
    calls: list[tuple[bytes, dict[str, Any]]] = []

    def dispatch(body: bytes, headers: dict[str, Any]) -> tuple[bytes, str | None]:
        calls.append((body, headers))
        event = json.loads(body)
        if event.get("fail"):
            return b'{"errorType": "LookupError", "errorMessage": "no"}', "Unhandled"
        return json.dumps({"echo": event}).encode(), None

    with local_aws() as aws:
        role = boto3.client("iam").create_role(
            RoleName="fn", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"})
        )["Role"]["Arn"]
        lambda_client = boto3.client("lambda")
        for name in ("ours", "theirs"):
            lambda_client.create_function(
                FunctionName=name,
                Runtime="python3.13",
                Role=role,
                Handler="app.lambda_handler",
                Code={"ZipFile": lambda_zip()},
            )
        aws.register_lambda("ours", dispatch)

        ok = lambda_client.invoke(FunctionName="ours", Payload=b'{"n": 1}')
        failed = lambda_client.invoke(FunctionName="ours", Payload=b'{"fail": true}')
        theirs = lambda_client.invoke(FunctionName="theirs", Payload=b'{"n": 2}')

    assert json.loads(ok["Payload"].read()) == {"echo": {"n": 1}}
    assert "FunctionError" not in ok
    assert failed["FunctionError"] == "Unhandled"
    assert json.loads(failed["Payload"].read())["errorType"] == "LookupError"
    assert len(calls) == 2  # an unregistered function is moto's own business
    assert "FunctionError" not in theirs


def test_event_bus_refs_become_getatt_name_and_rest_api_gets_a_name() -> None:
    template = {
        "Resources": {
            "Bus": {"Type": "AWS::Events::EventBus", "Properties": {"Name": "b"}},
            "Rule": {"Type": "AWS::Events::Rule", "Properties": {"EventBusName": {"Ref": "Bus"}}},
            "Api": {"Type": "AWS::ApiGateway::RestApi", "Properties": {}},
        }
    }

    adjusted = adjust_template(template)

    rule = adjusted["Resources"]["Rule"]["Properties"]
    assert rule["EventBusName"] == {"Fn::GetAtt": ["Bus", "Name"]}
    assert adjusted["Resources"]["Api"]["Properties"]["Name"] == "Api"
    assert template["Resources"]["Rule"]["Properties"]["EventBusName"] == {"Ref": "Bus"}


def test_nested_stacks_from_local_templates_are_left_out_with_their_outputs() -> None:
    template = {
        "Resources": {
            "Schemas": {
                "Type": "AWS::CloudFormation::Stack",
                "Properties": {"TemplateURL": "events/schemas/registry.yaml"},
            },
            "Packaged": {
                "Type": "AWS::CloudFormation::Stack",
                "Properties": {"TemplateURL": "https://s3.amazonaws.com/b/nested.yaml"},
            },
        },
        "Outputs": {
            "RegistryName": {"Value": {"Fn::GetAtt": ["Schemas", "Outputs.RegistryName"]}},
            "Other": {"Value": {"Fn::GetAtt": ["Packaged", "Outputs.X"]}},
        },
    }

    adjusted = adjust_template(template)

    assert set(adjusted["Resources"]) == {"Packaged"}
    assert "RegistryName" not in adjusted["Outputs"]
    assert "Other" in adjusted["Outputs"]


def test_substitute_definition_replaces_only_the_given_keys() -> None:
    assert (
        substitute_definition('{"a": "${A}", "b": "${B}"}', {"A": "x"}) == '{"a": "x", "b": "${B}"}'
    )
