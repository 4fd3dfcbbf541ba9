"""Static checks of template.yaml: wiring to the code and the workflow, least privilege, schemas.

The template is read with SAM's own YAML loader (short-form intrinsics such as ``!Ref`` become
``{"Ref": ...}``); nothing is deployed or translated.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from samtranslator.yaml_helper import yaml_parse

from imagegen_common.settings import ApiSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO_ROOT / "template.yaml"
ASL_PATH = REPO_ROOT / "statemachine" / "generate_image.asl.json"

WORKFLOW_SUBSTITUTIONS = {
    "ValidatePromptFunctionArn",
    "GenerateWithBedrockFunctionArn",
    "CreatePresignedUrlsFunctionArn",
    "DescribeFailureFunctionArn",
    "GpuJobQueueUrl",
    "EventBusName",
    "EventSource",
}

# (resource, statement Sid) -> why AWS requires Resource "*" there.
WILDCARD_RESOURCE_ALLOWED = {
    ("StateMachine", "DeliverExecutionLogs"): "CloudWatch Logs vended-log delivery APIs have no "
    "resource-level permissions",
}


@cache
def template() -> dict[str, Any]:
    return yaml_parse(TEMPLATE_PATH.read_text())


def resources(resource_type: str | None = None) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in template()["Resources"].items()
        if resource_type is None or resource["Type"] == resource_type
    }


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_statements() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every inline IAM statement in the template, with the logical id of its resource."""
    for name, resource in resources().items():
        properties = resource.get("Properties", {})
        if resource["Type"] in {"AWS::Serverless::Function", "AWS::Serverless::StateMachine"}:
            for policy in _as_list(properties.get("Policies", [])):
                if isinstance(policy, dict) and "Statement" in policy:
                    for statement in _as_list(policy["Statement"]):
                        yield name, statement
        elif resource["Type"] == "AWS::IAM::Role":
            for policy in properties.get("Policies", []):
                for statement in _as_list(policy["PolicyDocument"]["Statement"]):
                    yield name, statement


def policy_statements_of(resource_name: str) -> Iterator[tuple[str | None, dict[str, Any]]]:
    for name, statement in policy_statements():
        if name == resource_name:
            yield statement.get("Sid"), statement


def managed_policy_names() -> Iterator[tuple[str, str]]:
    """(resource, name) of every SAM policy template or managed policy the template attaches."""
    for name, resource in resources().items():
        properties = resource.get("Properties", {})
        for policy in _as_list(properties.get("Policies", [])):
            if isinstance(policy, str):
                yield name, policy
            elif isinstance(policy, dict) and "Statement" not in policy:
                yield name, next(iter(policy))
        for arn in properties.get("ManagedPolicyArns", []):
            yield name, json.dumps(arn)


# --- Workflow and code wiring --------------------------------------------------------------


def test_state_machine_substitutions_are_exactly_the_workflow_keys() -> None:
    substitutions = resources()["StateMachine"]["Properties"]["DefinitionSubstitutions"]
    assert set(substitutions) == WORKFLOW_SUBSTITUTIONS


def test_asl_uses_every_substitution_and_no_other() -> None:
    properties = resources()["StateMachine"]["Properties"]
    assert (REPO_ROOT / properties["DefinitionUri"]) == ASL_PATH
    used = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", ASL_PATH.read_text()))
    defined = set(properties["DefinitionSubstitutions"])
    assert not used - defined, f"ASL placeholders without a substitution: {sorted(used - defined)}"
    assert not defined - used, f"substitutions the ASL never uses: {sorted(defined - used)}"


def test_workflow_function_substitutions_point_at_their_functions() -> None:
    substitutions = resources()["StateMachine"]["Properties"]["DefinitionSubstitutions"]
    for key, value in substitutions.items():
        if key.endswith("FunctionArn"):
            assert value == {"Fn::GetAtt": [key.removesuffix("Arn"), "Arn"]}


@pytest.mark.parametrize("name", sorted(resources("AWS::Serverless::Function")))
def test_function_code_uri_holds_app_py(name: str) -> None:
    code_uri = resources()[name]["Properties"]["CodeUri"]
    assert (REPO_ROOT / code_uri / "app.py").is_file(), f"{name}: {code_uri}app.py is missing"


@pytest.mark.parametrize("name", sorted(resources("AWS::Serverless::Function")))
def test_function_logs_to_its_own_group_with_retention(name: str) -> None:
    log_group = resources()[name]["Properties"]["LoggingConfig"]["LogGroup"]
    assert log_group == {"Ref": f"{name}LogGroup"}
    assert "RetentionInDays" in resources()[f"{name}LogGroup"]["Properties"]


def test_common_layer_is_built_for_lambda_platform() -> None:
    layer = resources()["CommonLayer"]
    assert (REPO_ROOT / layer["Properties"]["ContentUri"] / "requirements.txt").is_file()
    assert layer["Metadata"] == {"BuildMethod": "python3.13", "BuildArchitecture": "arm64"}
    globals_function = template()["Globals"]["Function"]
    assert globals_function["Runtime"] == "python3.13"
    assert globals_function["Architectures"] == ["arm64"]


LOCAL_STACK_ONLY_SETTINGS = {"WEBHOOK_ALLOW_LOOPBACK"}
"""Settings a deployment never sets: only the local stack (imagegen/local) does."""


def test_globals_environment_covers_every_setting() -> None:
    variables = set(template()["Globals"]["Function"]["Environment"]["Variables"])
    variables |= set(resources()["ApiFunction"]["Properties"]["Environment"]["Variables"])
    settings = {field.upper() for field in ApiSettings.model_fields}
    settings -= LOCAL_STACK_ONLY_SETTINGS
    assert not settings - variables, f"settings no function receives: {settings - variables}"
    assert not LOCAL_STACK_ONLY_SETTINGS & variables, "a local-only setting is in the template"


# --- Least privilege -----------------------------------------------------------------------


def test_no_full_access_policies() -> None:
    offenders = [
        (name, policy) for name, policy in managed_policy_names() if "FullAccess" in policy
    ]
    assert not offenders


def test_wildcard_resources_only_where_aws_requires_them() -> None:
    wildcards = {
        (name, statement.get("Sid"))
        for name, statement in policy_statements()
        if statement.get("Effect") == "Allow" and "*" in _as_list(statement.get("Resource"))
    }
    assert wildcards <= set(WILDCARD_RESOURCE_ALLOWED), wildcards - set(WILDCARD_RESOURCE_ALLOWED)


def test_bedrock_invoke_only_on_allowed_foundation_models() -> None:
    bedrock = [
        (name, statement)
        for name, statement in policy_statements()
        if any(str(action).startswith("bedrock:") for action in _as_list(statement["Action"]))
    ]
    assert [name for name, _ in bedrock] == ["GenerateWithBedrockFunction"]
    statement = bedrock[0][1]
    assert _as_list(statement["Action"]) == ["bedrock:InvokeModel"]
    assert statement["Condition"] == {
        "StringEquals": {"aws:RequestedRegion": {"Ref": "BedrockRegion"}}
    }
    # Resource: one foundation-model ARN per AllowedModelIds entry (Split/Sub/Join).
    delimiter, sub = statement["Resource"]["Fn::Split"]
    pattern, variables = sub["Fn::Sub"]
    join_delimiter, joined = variables["ModelArnsTail"]["Fn::Join"]
    assert joined == {"Ref": "AllowedModelIds"}
    prefix = pattern.removesuffix("${ModelArnsTail}")
    assert join_delimiter == delimiter + prefix
    assert re.fullmatch(r"arn:[^:]+:bedrock:[^:]+::foundation-model/", prefix)
    model_ids = template()["Parameters"]["AllowedModelIds"]["Default"].split(",")
    resolved = (prefix + join_delimiter.join(model_ids)).split(delimiter)
    assert resolved == [prefix + model_id for model_id in model_ids]


def test_s3_object_access_is_limited_to_the_images_prefix() -> None:
    s3_statements = [
        (name, statement)
        for name, statement in policy_statements()
        if any(str(action).startswith("s3:") for action in _as_list(statement["Action"]))
    ]
    # The functions that write or sign images have such statements: none at all is a broken read.
    assert {name for name, _ in s3_statements} >= {
        "GenerateWithBedrockFunction",
        "CreatePresignedUrlsFunction",
    }
    for name, statement in s3_statements:
        assert set(_as_list(statement["Action"])) <= {"s3:GetObject", "s3:PutObject"}, name
        assert statement["Resource"] == {"Fn::Sub": "${ImagesBucket.Arn}/images/*"}, name


def test_api_function_reaches_only_its_own_executions() -> None:
    statements = dict(policy_statements_of("ApiFunction"))
    execution = statements["ReadOwnExecutions"]
    assert set(execution["Action"]) == {
        "states:DescribeExecution",
        "states:GetExecutionHistory",
        "states:StopExecution",
    }
    assert execution["Resource"]["Fn::Sub"].endswith(":execution:${StateMachine.Name}:*")


def test_state_machine_invokes_only_workflow_functions() -> None:
    statements = dict(policy_statements_of("StateMachine"))
    invoked = {arn["Fn::GetAtt"][0] for arn in statements["InvokeWorkflowFunctions"]["Resource"]}
    assert invoked == {
        key.removesuffix("Arn") for key in WORKFLOW_SUBSTITUTIONS if key.endswith("FunctionArn")
    }


# --- API, bucket, events -------------------------------------------------------------------


# Public on purpose: Swagger UI (a browser's link cannot send a key) and the CORS preflights
# (browsers send them without credentials). Everything else needs the chosen auth.
PUBLIC_ROUTES = {
    ("/docs", "get"),
    ("/generate", "options"),
    ("/generate/{execution_id}", "options"),
    ("/models", "options"),
    ("/openapi.json", "options"),
}


def test_every_api_method_requires_the_chosen_auth() -> None:
    api = resources()["ImageGenApi"]["Properties"]
    expected = {"Fn::If": ["UseIam", [{"AWS_IAM": []}], [{"api_key": []}]]}
    routes = {
        (event["Properties"]["Path"], event["Properties"]["Method"])
        for event in resources()["ApiFunction"]["Properties"]["Events"].values()
    }
    assert routes >= PUBLIC_ROUTES
    paths = api["DefinitionBody"]["paths"]
    # A route the body does not declare gets no security: only the public ones may be missing.
    assert {(path, method) for path, item in paths.items() for method in item} == (
        routes - PUBLIC_ROUTES
    )
    for item in paths.values():
        for operation in item.values():
            assert operation["security"] == expected


def test_images_bucket_is_private_and_expires_images() -> None:
    bucket = resources()["ImagesBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    (expiry,) = [rule for rule in bucket["LifecycleConfiguration"]["Rules"] if "Prefix" in rule]
    assert expiry["Prefix"] == "images/"
    assert expiry["ExpirationInDays"] == {"Ref": "ImageRetentionDays"}
    (deny,) = resources()["ImagesBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


@pytest.mark.parametrize("name", ["ResultEventsRule", "WebhookRule"])
def test_result_rules_match_the_events_source(name: str) -> None:
    # Their detail-types are checked against the one list in tests/unit/test_facts.py.
    pattern = resources()[name]["Properties"]["EventPattern"]
    assert pattern["source"] == [{"Ref": "EventSource"}]


def test_outputs() -> None:
    assert set(template()["Outputs"]) >= {
        "ApiUrl",
        "ApiKeyId",
        "EventBusName",
        "ImagesBucketName",
        "StateMachineArn",
        "GpuJobQueueUrl",
        "ResultEventsQueueUrl",
        "SchemaRegistryName",
    }


# --- Event schemas -------------------------------------------------------------------------


@cache
def schema_generator() -> ModuleType:
    path = REPO_ROOT / "scripts" / "generate_event_schemas.py"
    spec = importlib.util.spec_from_file_location("generate_event_schemas", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schema_files_match_the_models() -> None:
    schemas_dir = REPO_ROOT / "events" / "schemas"
    expected: dict[str, str] = schema_generator().schema_files()
    assert {path.name for path in schemas_dir.glob("*.json")} == set(expected)
    for file_name, text in expected.items():
        assert (schemas_dir / file_name).read_text() == text, (
            f"{file_name} is stale: run python scripts/generate_event_schemas.py"
        )


def test_template_schema_content_matches_the_files() -> None:
    registry = yaml_parse((REPO_ROOT / "events" / "schemas" / "registry.yaml").read_text())
    schemas = {
        name: resource
        for name, resource in registry["Resources"].items()
        if resource["Type"] == "AWS::EventSchemas::Schema"
    }
    assert len(schemas) == len(schema_generator().EVENTS)
    for name, resource in schemas.items():
        properties = resource["Properties"]
        assert properties["Type"] == "JSONSchemaDraft4"
        file_name = re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Schema")).lower()
        on_disk = json.loads((REPO_ROOT / "events" / "schemas" / f"{file_name}.json").read_text())
        assert json.loads(properties["Content"]) == on_disk, (
            f"{name}.Content is stale: run python scripts/generate_event_schemas.py"
        )
        assert on_disk["properties"]["detail-type"]["enum"] == [properties["Description"]]
