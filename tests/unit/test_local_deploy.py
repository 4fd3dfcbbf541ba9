"""The local stack's deployer and in-process Lambda runtime, on a small SAM template of our own."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from imagegen.local.deploy import DeployError, deploy_stack
from imagegen.local.lambda_runtime import FunctionSpec, LambdaRuntime
from imagegen.local.moto_workarounds import MOTO_CONFIG, adjust_template, substitute_definition

REPO_ROOT = Path(__file__).resolve().parents[2]

FIXTURE_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Greeting:
    Type: String
    Default: Hello
Globals:
  Function:
    Runtime: python3.13
    Timeout: 30
    Environment:
      Variables:
        POWERTOOLS_SERVICE_NAME: fixture
        IMAGES_BUCKET: !Ref ImagesBucket
Resources:
  ImagesBucket:
    Type: AWS::S3::Bucket
  EventsBus:
    Type: AWS::Events::EventBus
    Properties:
      Name: !Sub "${AWS::StackName}-events"
  ResultQueue:
    Type: AWS::SQS::Queue
  ResultQueuePolicy:
    Type: AWS::SQS::QueuePolicy
    Properties:
      Queues: [!Ref ResultQueue]
      PolicyDocument:
        Statement:
          - Effect: Allow
            Principal: {Service: events.amazonaws.com}
            Action: sqs:SendMessage
            Resource: !GetAtt ResultQueue.Arn
  ResultRule:
    Type: AWS::Events::Rule
    Properties:
      EventBusName: !Ref EventsBus
      EventPattern:
        source: [fixture]
      Targets:
        - Arn: !GetAtt ResultQueue.Arn
          Id: results
  GreetFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/greet
      Handler: app.lambda_handler
      MemorySize: 256
      Environment:
        Variables:
          GREETING: !Ref Greeting
          EVENT_BUS_NAME: !Ref EventsBus
  ApiFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/api
      Handler: app.lambda_handler
      Environment:
        Variables:
          STATE_MACHINE_ARN: !Ref Machine
      Events:
        Post:
          Type: Api
          Properties: {Path: /hello, Method: post}
        Get:
          Type: Api
          Properties: {Path: "/hello/{name}", Method: get}
  Machine:
    Type: AWS::Serverless::StateMachine
    Properties:
      Type: STANDARD
      DefinitionUri: statemachine/machine.asl.json
      DefinitionSubstitutions:
        GreetFunctionArn: !GetAtt GreetFunction.Arn
        EventBusName: !Ref EventsBus
      Policies:
        - LambdaInvokePolicy: {FunctionName: !Ref GreetFunction}
Outputs:
  MachineArn:
    Value: !Ref Machine
"""

FIXTURE_ASL = {
    "StartAt": "Greet",
    "States": {
        "Greet": {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"FunctionName": "${GreetFunctionArn}", "Payload.$": "$"},
            "OutputPath": "$.Payload",
            "Catch": [
                {"ErrorEquals": ["NameMissingError"], "ResultPath": "$.error", "Next": "No Name"}
            ],
            "Next": "Emit",
        },
        "Emit": {
            "Type": "Task",
            "Resource": "arn:aws:states:::events:putEvents",
            "Parameters": {
                "Entries": [
                    {
                        "EventBusName": "${EventBusName}",
                        "Source": "fixture",
                        "DetailType": "Greeted",
                        "Detail.$": "$",
                    }
                ]
            },
            "End": True,
        },
        "No Name": {"Type": "Fail", "Error": "NoName", "Cause": "caught NameMissingError"},
    },
}

GREET_APP = """\
import os

GREETING = os.environ["GREETING"]  # read at import time, as our settings are


class NameMissingError(Exception):
    pass


def lambda_handler(event, context):
    if not event.get("name"):
        raise NameMissingError("name is required")
    return {
        "message": f"{GREETING}, {event['name']}",
        "function_name": context.function_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "bus": os.environ["EVENT_BUS_NAME"],
    }
"""

API_APP = """\
import json


def lambda_handler(event, context):
    return {"statusCode": 200, "body": json.dumps({"path": event.get("path")})}
"""


def write_fixture(root: Path, template: str = FIXTURE_TEMPLATE) -> Path:
    (root / "functions" / "greet").mkdir(parents=True)
    (root / "functions" / "api").mkdir(parents=True)
    (root / "statemachine").mkdir()
    (root / "functions" / "greet" / "app.py").write_text(GREET_APP)
    (root / "functions" / "api" / "app.py").write_text(API_APP)
    (root / "statemachine" / "machine.asl.json").write_text(json.dumps(FIXTURE_ASL))
    path = root / "template.yaml"
    path.write_text(template)
    return path


@pytest.fixture
def fixture_template(tmp_path: Path) -> Path:
    return write_fixture(tmp_path)


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws(config=MOTO_CONFIG):
        yield


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


def test_invalid_sam_template_is_a_deploy_error(tmp_path: Path) -> None:
    broken = FIXTURE_TEMPLATE.replace("Handler: app.lambda_handler\n      MemorySize", "MemorySize")
    broken = broken.replace("Runtime: python3.13", "Runtime: [not, a, string]")
    with mock_aws(config=MOTO_CONFIG), pytest.raises(DeployError, match="translation failed"):
        deploy_stack(write_fixture(tmp_path, broken))


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


def test_substitute_definition_replaces_only_the_given_keys() -> None:
    assert (
        substitute_definition('{"a": "${A}", "b": "${B}"}', {"A": "x"}) == '{"a": "x", "b": "${B}"}'
    )


# --- The runtime on its own ------------------------------------------------------------------


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
    import threading

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
