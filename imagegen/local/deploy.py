"""Deploys template.yaml into moto, offline, and describes what it created.

The SAM template is translated to CloudFormation with samtranslator (after its local
``CodeUri``/``ContentUri``/``DefinitionUri`` are swapped for what samtranslator accepts), the
result is adjusted for moto's gaps (``moto_aws``) and created as a stack in moto's
CloudFormation. Everything the local stack knows about resources comes from that stack, so a
change to the template shows up locally; there is no second list of resources.

Needs moto open through ``moto_aws.local_aws()``: its in-process mock, or its server in this
process (``AWS_ENDPOINT_URL`` or ``endpoint_url``).
"""

from __future__ import annotations

import functools
import json
import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from imagegen.local import moto_aws
from imagegen.local.lambda_runtime import DEFAULT_REGION, FunctionSpec, LambdaRuntime

logger = logging.getLogger(__name__)

DEFAULT_STACK_NAME = "imagegen-local"
_HTTP_METHODS = {
    "get",
    "put",
    "post",
    "delete",
    "patch",
    "head",
    "options",
    "x-amazon-apigateway-any-method",
}


class DeployError(RuntimeError):
    """The template could not be translated or the stack did not reach CREATE_COMPLETE."""


@dataclass(frozen=True)
class DeployedFunction:
    """A function of the stack: where its code is and what it runs with."""

    logical_id: str
    function_name: str
    function_arn: str
    code_uri: Path
    handler: str
    environment: dict[str, str]
    timeout_s: int
    memory_mb: int
    region: str
    layer_dirs: tuple[Path, ...] = ()

    @property
    def handler_path(self) -> Path:
        """The handler's source file (CodeUri + the module part of Handler)."""
        return self.spec.module_path

    @property
    def spec(self) -> FunctionSpec:
        return FunctionSpec(
            logical_id=self.logical_id,
            code_dir=self.code_uri,
            handler=self.handler,
            environment=self.environment,
            function_name=self.function_name,
            function_arn=self.function_arn,
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            region=self.region,
        )


@dataclass(frozen=True)
class ApiRoute:
    """One method of the template's REST API and the function its proxy integration calls."""

    api_logical_id: str
    method: str
    resource: str
    function_logical_id: str


@dataclass(frozen=True)
class DeployedStack:
    """The stack moto created from the template, by logical id."""

    stack_name: str
    region: str
    template_path: Path
    resources: dict[str, tuple[str, str]]
    """logical id -> (resource type, physical id)."""
    outputs: dict[str, str]
    buckets: dict[str, str]
    """logical id -> bucket name."""
    queues: dict[str, str]
    """logical id -> queue URL."""
    event_buses: dict[str, str]
    """logical id -> bus name."""
    state_machines: dict[str, str]
    """logical id -> state machine ARN."""
    functions: dict[str, DeployedFunction]
    routes: list[ApiRoute]
    stages: dict[str, str]
    """API logical id -> stage name."""
    tables: dict[str, str] = field(default_factory=dict)
    """logical id -> DynamoDB table name."""
    runtime: LambdaRuntime | None = field(default=None, compare=False, repr=False)

    def only(self, kind: str) -> str:
        """The physical id of the one bucket/queue/event_bus/state_machine of the stack."""
        mapping: dict[str, str] = getattr(self, kind)
        if len(mapping) != 1:
            raise KeyError(f"the stack has {len(mapping)} {kind}: {sorted(mapping)}")
        return next(iter(mapping.values()))

    def invoke(self, logical_id: str, event: Any) -> Any:
        """Run one function's handler in-process with ``event``; its exceptions propagate."""
        runtime = self.runtime or LambdaRuntime()
        return runtime.invoke(self.functions[logical_id].spec, event)


# --- Translation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalCode:
    """Local code folders by SAM logical id: ``CodeUri`` of functions, ``ContentUri`` of layers."""

    functions: dict[str, Path]
    layers: dict[str, Path]


def load_sam_template(template_path: Path) -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse

    return yaml_parse(template_path.read_text())


def translate_template(
    template_path: Path,
    parameters: Mapping[str, str] | None = None,
    region: str = DEFAULT_REGION,
    artifact_bucket: str = "imagegen-local-artifacts",
) -> tuple[dict[str, Any], LocalCode]:
    """CloudFormation for ``template_path`` and the local folders of its functions and layers.

    samtranslator rejects local paths, so code locations become ``s3://`` keys in
    ``artifact_bucket`` (``<LogicalId>.zip``) and local ``DefinitionUri`` files are inlined.
    """
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    base_dir = template_path.resolve().parent
    sam = load_sam_template(template_path)
    resources: dict[str, Any] = sam.get("Resources") or {}
    global_function = (sam.get("Globals") or {}).get("Function") or {}
    code_dirs: dict[str, Path] = {}
    layer_dirs: dict[str, Path] = {}
    for logical_id, resource in resources.items():
        kind = resource.get("Type")
        properties = resource.setdefault("Properties", {})
        if kind == "AWS::Serverless::Function" and "InlineCode" not in properties:
            code_uri = properties.get("CodeUri", global_function.get("CodeUri", "."))
            if isinstance(code_uri, str) and not code_uri.startswith("s3://"):
                code_dirs[logical_id] = (base_dir / code_uri).resolve()
                properties["CodeUri"] = f"s3://{artifact_bucket}/{logical_id}.zip"
        elif kind == "AWS::Serverless::LayerVersion":
            content_uri = properties.get("ContentUri")
            if isinstance(content_uri, str) and not content_uri.startswith("s3://"):
                layer_dirs[logical_id] = (base_dir / content_uri).resolve()
                properties["ContentUri"] = f"s3://{artifact_bucket}/{logical_id}.zip"
        elif kind == "AWS::Serverless::StateMachine":
            definition_uri = properties.get("DefinitionUri")
            if isinstance(definition_uri, str) and not definition_uri.startswith("s3://"):
                properties["Definition"] = _read_document(
                    base_dir / properties.pop("DefinitionUri")
                )
        elif kind in ("AWS::Serverless::Api", "AWS::Serverless::HttpApi"):
            definition_uri = properties.get("DefinitionUri")
            if isinstance(definition_uri, str) and not definition_uri.startswith("s3://"):
                properties["DefinitionBody"] = _read_document(
                    base_dir / properties.pop("DefinitionUri")
                )
    session = boto3.session.Session(region_name=region)
    translator = Translator(None, Parser(), boto_session=session)
    try:
        cfn = translator.translate(
            sam, parameter_values=dict(parameters or {}), get_managed_policy_map=lambda: {}
        )
    except InvalidDocumentException as error:
        causes = "; ".join(str(cause) for cause in error.causes)
        raise DeployError(f"{template_path}: SAM translation failed: {causes}") from error
    return cfn, LocalCode(functions=code_dirs, layers=layer_dirs)


def _read_document(path: Path) -> Any:
    from samtranslator.yaml_helper import yaml_parse

    if not path.is_file():
        raise DeployError(f"{path} does not exist")
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml_parse(text)


# --- Deployment ------------------------------------------------------------------------------


def deploy_stack(
    template_path: str | Path,
    *,
    parameters: Mapping[str, str] | None = None,
    stack_name: str = DEFAULT_STACK_NAME,
    region: str = DEFAULT_REGION,
    endpoint_url: str | None = None,
    runtime: LambdaRuntime | None = None,
    wire_lambdas: bool = True,
    timeout_s: float = 60.0,
) -> DeployedStack:
    """Create the template's stack in moto and return what it created.

    With ``wire_lambdas`` (the default) moto's Lambda invocations of the stack's functions (the
    state machine's Lambda tasks) run our handlers in this process through ``runtime``.
    """
    moto_aws.current()  # moto is open, with its config and work-arounds (else a clear error)
    template_path = Path(template_path).resolve()
    artifact_bucket = f"{stack_name}-artifacts".lower()
    cfn, local_code = translate_template(template_path, parameters, region, artifact_bucket)
    cfn = moto_aws.adjust_template(cfn)
    client = functools.partial(_client, region=region, endpoint_url=endpoint_url)

    s3 = client("s3")
    _create_bucket(s3, artifact_bucket, region)
    code_zip = moto_aws.placeholder_code_zip()
    for key in sorted(_artifact_keys(cfn, artifact_bucket)):
        s3.put_object(Bucket=artifact_bucket, Key=key, Body=code_zip)

    declared = cfn.get("Parameters") or {}
    unknown = sorted(set(parameters or {}) - set(declared))
    if unknown:
        raise DeployError(f"{template_path} has no parameters {unknown}")
    stack_parameters = moto_aws.parameters_with_list_defaults(
        declared, {key: str(value) for key, value in (parameters or {}).items()}
    )
    cloudformation = client("cloudformation")
    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            # moto warns (and logs) for each type it skips; the log line is enough.
            warnings.filterwarnings("ignore", message="Tried to parse", category=UserWarning)
            cloudformation.create_stack(
                StackName=stack_name,
                TemplateBody=json.dumps(cfn),
                Parameters=[
                    {"ParameterKey": key, "ParameterValue": value}
                    for key, value in stack_parameters.items()
                ],
                Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
            )
    except Exception as error:
        raise DeployError(f"creating stack {stack_name} failed: {error}") from error
    _wait_for_stack(cloudformation, stack_name, timeout_s)
    logger.info("stack %s created in %.2f s", stack_name, time.monotonic() - started)

    stack = describe_stack(
        cloudformation,
        stack_name,
        cfn,
        local_code,
        template_path=template_path,
        region=region,
        lambda_client=client("lambda"),
    )
    if wire_lambdas:
        runtime = runtime or LambdaRuntime()
        wire_functions(stack, runtime)
        stack = _with_runtime(stack, runtime)
    return stack


def wire_functions(stack: DeployedStack, runtime: LambdaRuntime) -> None:
    """Route moto's invocations of the stack's functions to ``runtime``."""
    aws = moto_aws.current()
    for function in stack.functions.values():
        aws.register_lambda(
            function.function_name, functools.partial(_dispatch, runtime, function.spec)
        )


def _dispatch(
    runtime: LambdaRuntime, spec: FunctionSpec, body: bytes, headers: dict[str, Any]
) -> tuple[bytes, str | None]:
    return runtime.dispatch(spec, body)


def _with_runtime(stack: DeployedStack, runtime: LambdaRuntime) -> DeployedStack:
    from dataclasses import replace

    return replace(stack, runtime=runtime)


def _client(service: str, *, region: str, endpoint_url: str | None) -> Any:
    session = boto3.session.Session(region_name=region)
    if endpoint_url:
        return session.client(service, endpoint_url=endpoint_url)
    return session.client(service)


def _create_bucket(s3: Any, name: str, region: str) -> None:
    if region == "us-east-1":
        s3.create_bucket(Bucket=name)
    else:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})


def _artifact_keys(node: Any, bucket: str) -> set[str]:
    """Every S3 key in ``bucket`` that the translated template refers to."""
    keys: set[str] = set()
    if isinstance(node, dict):
        if node.get("S3Bucket") == bucket and isinstance(node.get("S3Key"), str):
            keys.add(node["S3Key"])
        for value in node.values():
            keys |= _artifact_keys(value, bucket)
    elif isinstance(node, list):
        for item in node:
            keys |= _artifact_keys(item, bucket)
    return keys


def _wait_for_stack(cloudformation: Any, stack_name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
        status = stack["StackStatus"]
        if status == "CREATE_COMPLETE":
            return
        if not status.endswith("IN_PROGRESS") or time.monotonic() > deadline:
            events = cloudformation.describe_stack_events(StackName=stack_name)["StackEvents"]
            reasons = [
                f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
                for e in events
                if e.get("ResourceStatusReason")
            ]
            raise DeployError(
                f"stack {stack_name} is {status}: {'; '.join(reasons) or 'no reason'}"
            )
        time.sleep(0.1)


# --- Description -----------------------------------------------------------------------------


def describe_stack(
    cloudformation: Any,
    stack_name: str,
    cfn: dict[str, Any],
    local_code: LocalCode,
    *,
    template_path: Path,
    region: str,
    lambda_client: Any,
) -> DeployedStack:
    """What the stack holds, by logical id, read back from moto."""
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    carried, outputs = moto_aws.physical_ids_from_outputs(
        {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    )
    resources: dict[str, tuple[str, str]] = {}
    declared = cfn.get("Resources") or {}
    for resource in cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]:
        logical_id = resource.get("LogicalResourceId")
        if logical_id is None:
            continue  # a type moto's CloudFormation skipped (it logged a warning)
        kind = resource.get("ResourceType") or declared.get(logical_id, {}).get("Type", "")
        physical_id = resource.get("PhysicalResourceId") or carried.get(logical_id, "")
        resources[logical_id] = (kind, physical_id)

    def of_type(kind: str) -> dict[str, str]:
        return {lid: pid for lid, (rtype, pid) in resources.items() if rtype == kind}

    layer_dirs = tuple(sorted(set(local_code.layers.values())))
    functions: dict[str, DeployedFunction] = {}
    for logical_id, name in of_type("AWS::Lambda::Function").items():
        if logical_id not in local_code.functions:
            continue  # inline code or code in S3: nothing local to run
        configuration = lambda_client.get_function(FunctionName=name)["Configuration"]
        functions[logical_id] = DeployedFunction(
            logical_id=logical_id,
            function_name=configuration["FunctionName"],
            function_arn=configuration["FunctionArn"],
            code_uri=local_code.functions[logical_id],
            handler=configuration["Handler"],
            # Lambda's variables are strings; moto keeps a Number parameter's int.
            environment={
                name: str(value)
                for name, value in (
                    (configuration.get("Environment") or {}).get("Variables") or {}
                ).items()
            },
            timeout_s=int(configuration.get("Timeout", 3)),
            memory_mb=int(configuration.get("MemorySize", 128)),
            region=region,
            layer_dirs=layer_dirs,
        )
    parameter_values = {
        p["ParameterKey"]: str(p.get("ParameterValue", "")) for p in stack.get("Parameters", [])
    }
    routes, stages = _api_routes(cfn, parameter_values)
    return DeployedStack(
        stack_name=stack_name,
        region=region,
        template_path=template_path,
        resources=resources,
        outputs=outputs,
        buckets=of_type("AWS::S3::Bucket"),
        queues=of_type("AWS::SQS::Queue"),
        event_buses=of_type("AWS::Events::EventBus"),
        state_machines=of_type("AWS::StepFunctions::StateMachine"),
        functions=functions,
        routes=routes,
        stages=stages,
        tables=of_type("AWS::DynamoDB::Table"),
    )


def _api_routes(
    cfn: dict[str, Any], parameter_values: Mapping[str, str]
) -> tuple[list[ApiRoute], dict[str, str]]:
    """The REST APIs' methods with an ``aws_proxy`` integration to one of the stack's functions."""
    resources: dict[str, Any] = cfn.get("Resources") or {}
    routes: list[ApiRoute] = []
    stages: dict[str, str] = {}
    for api_id, resource in resources.items():
        if resource.get("Type") != "AWS::ApiGateway::RestApi":
            continue
        body = (resource.get("Properties") or {}).get("Body") or {}
        for path, methods in (body.get("paths") or {}).items():
            for method, operation in (methods or {}).items():
                if method.lower() not in _HTTP_METHODS or not isinstance(operation, dict):
                    continue
                integration = operation.get("x-amazon-apigateway-integration") or {}
                function_id = _function_of_integration(integration.get("uri"), resources)
                if integration.get("type") == "aws_proxy" and function_id:
                    verb = "ANY" if method.startswith("x-amazon") else method.upper()
                    routes.append(ApiRoute(api_id, verb, path, function_id))
    for resource in resources.values():
        if resource.get("Type") == "AWS::ApiGateway::Stage":
            properties = resource.get("Properties") or {}
            api_ref = properties.get("RestApiId")
            if isinstance(api_ref, dict) and "Ref" in api_ref:
                stage = properties.get("StageName", "Prod")
                if isinstance(stage, dict) and stage.get("Ref") in parameter_values:
                    stage = parameter_values[stage["Ref"]]
                stages[api_ref["Ref"]] = stage if isinstance(stage, str) else "Prod"
    return routes, stages


def _function_of_integration(uri: Any, resources: Mapping[str, Any]) -> str | None:
    """The logical id of the function an integration URI names (``${F.Arn}`` or ``GetAtt``)."""
    text = json.dumps(uri)
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Lambda::Function":
            continue
        if f"${{{logical_id}.Arn}}" in text or f'["{logical_id}", "Arn"]' in text:
            return logical_id
    return None
