"""moto, as the local stack and the tests use it: one door (moto 5.2.5).

``with local_aws() as aws:`` runs AWS in this process (moto's mock); ``with local_aws(server=True)
as aws:`` also serves it over HTTP on 127.0.0.1 (``aws.endpoint_url``), as `imagegen local` needs
for the processes it starts. This is the only way into moto here: the local stack, `imagegen
invoke`, the workflow tests and the GPU worker tests all come through it. Entering it

- patches moto's classes for the gaps listed below, each patch saying which gap it fills;
- sets moto's config to ``MOTO_CONFIG`` (execute ASL for real, Lambda without Docker);
- starts the in-process mock (taking ``AWS_ENDPOINT_URL`` away meanwhile: every call must meet the
  mock), or the server (setting ``MOTO_PORT``, where moto's interpreter calls its tasks' services);

and leaving it stops the server, resets moto's backends and puts back moto's config, those
variables and every patched attribute: after it, moto is as imported. moto's state is process-wide,
so the door is open once at a time; entering it while it is open raises.

The template is adjusted on its way into moto's CloudFormation by the plain functions of the first
section (``deploy`` calls them); nothing here changes our production code.

Gaps filled (details at each block):
- template: ``Ref`` of an EventBus; RestApi without ``Name``; Outputs reading unmodelled types;
  list-typed parameter defaults not split; EventBus without a physical id;
- code: Lambda code zips must exist in S3 (a placeholder is uploaded);
- Step Functions: machines created by CloudFormation land in the backend execute mode does not
  read, and DefinitionSubstitutions are ignored; GetExecutionHistory ignores reverseOrder and
  maxResults; no "Step Functions Execution Status Change" events; StopExecution waits for the
  current state to end (a `.waitForTaskToken` wait included) and may read FAILED; a heartbeat for
  a task without HeartbeatSeconds is refused; the ASL is parsed again for every execution;
- API Gateway: a RestApi's ``Body`` is ignored (and only OpenAPI 3 can be imported);
- Lambda: without Docker nothing runs (our handlers are dispatched through ``register_lambda``,
  errors reported with ``x-amz-function-error``);
- EventBridge: a rule with a Lambda target raises instead of invoking it;
- Lambda's SQS event source: moto invokes on send, once, and ignores batchItemFailures and
  visibility (``sqs_event_sources`` polls instead, as Lambda does);
- CloudFormation: no ``AWS::SecretsManager::Secret`` (created here, GenerateSecretString included).
Not worked around: ``AWS::SQS::QueuePolicy``, ``AWS::ApiGateway::Stage``/``ApiKey``/``UsagePlan``,
``AWS::S3::BucketPolicy`` and the schema registry are skipped by moto (logged); moto does not
invoke ``aws_proxy`` integrations (``api_gateway`` serves the routes instead).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import re
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from imagegen.local.moto_server import ensure_port_free, free_port
from imagegen.local.sqs_event_sources import SqsEventSource, SqsEventSourcePoller

logger = logging.getLogger(__name__)

MOTO_CONFIG: Any = {
    "stepfunctions": {"execute_state_machine": True},
    "lambda": {"use_docker": False},
}
"""moto's settings for the local stack: execute ASL for real, and Lambda without Docker."""

LambdaDispatch = Callable[[bytes, dict[str, Any]], tuple[bytes, str | None]]
"""Runs one invocation: (request body, request headers) -> (payload, function error or None)."""

Patch = tuple[Any, str, Any]
"""(object, attribute, replacement): one attribute of moto replaced while the door is open."""

_OUTPUT_PREFIX = "LocalStackPhysicalId"


# --- The door ----------------------------------------------------------------------------------


@dataclass
class LocalAws:
    """The open door: where moto answers, and which Lambda functions run our code."""

    endpoint_url: str | None = None
    """moto's server (``http://127.0.0.1:PORT``), or None for the in-process mock."""
    port: int | None = None
    _dispatchers: dict[str, LambdaDispatch] = field(default_factory=dict)
    _event_sources: list[SqsEventSourcePoller] = field(default_factory=list)
    _event_sources_lock: threading.Lock = field(default_factory=threading.Lock)
    _closing: bool = False

    def register_lambda(self, function_name: str, dispatch: LambdaDispatch) -> None:
        """Route moto's invocations of ``function_name`` (the state machine's Lambda tasks,
        EventBridge targets, the SQS event source) to ``dispatch``, until the door closes."""
        self._dispatchers[function_name] = dispatch

    def _invoke_for(self, function_name: str) -> Callable[[bytes], tuple[bytes, str | None]] | None:
        dispatch = self._dispatchers.get(function_name)
        if dispatch is None:
            return None
        return lambda body: dispatch(body, {})

    def _start_event_source(self, source: SqsEventSource) -> None:
        import boto3

        with self._event_sources_lock:
            if self._closing:
                return
            session = boto3.session.Session(
                aws_access_key_id="testing",
                aws_secret_access_key="testing",  # noqa: S106 (moto's, never a real account)
                region_name=source.region,
            )
            sqs = session.client("sqs", endpoint_url=self.endpoint_url)
            poller = SqsEventSourcePoller(source, sqs, self._invoke_for)
            self._event_sources.append(poller.start())

    def _stop_event_sources(self) -> None:
        with self._event_sources_lock:
            self._closing = True
            pollers, self._event_sources = self._event_sources, []
        for poller in pollers:
            poller.stop()


_open_lock = threading.Lock()
_open: LocalAws | None = None


def current() -> LocalAws:
    """The open door; RuntimeError when it is closed."""
    if _open is None:
        raise RuntimeError(
            "moto is not open: enter imagegen.local.moto_aws.local_aws() first (it applies the "
            "local stack's moto config and work-arounds, and undoes them on exit)"
        )
    return _open


@contextlib.contextmanager
def local_aws(
    *, server: bool = False, host: str = "127.0.0.1", port: int | None = None
) -> Iterator[LocalAws]:
    """moto with the local stack's config and work-arounds, until the block ends.

    ``server``: also serve it on ``host:port`` (a free port when ``port`` is None; PortInUseError
    when it is taken). Without it, the in-process mock answers this process's boto3 calls.
    """
    global _open
    if port is not None and not server:
        raise ValueError("a port is for moto's server: pass server=True")
    with _open_lock:
        if _open is not None:
            raise RuntimeError(
                "local_aws() is already open in this process: moto's backends, config and "
                "patches are process-wide, so one at a time (leave the first one first)"
            )
        aws = _open = LocalAws()
    try:
        with contextlib.ExitStack() as undo:
            for target, attribute, replacement in _patches(aws):
                undo.enter_context(mock.patch.object(target, attribute, replacement))
            from moto.core.config import default_user_config

            # moto's config is process-wide and the server's /moto-api/config changes it for
            # good: its contents now are put back on exit.
            undo.enter_context(mock.patch.dict(default_user_config))
            if server:
                _serve(aws, host, port, undo)
            else:
                from moto import mock_aws

                undo.enter_context(_environment(AWS_ENDPOINT_URL=None))
                undo.enter_context(mock_aws(config=MOTO_CONFIG))  # resets the backends on exit
            # The SQS pollers stop first, while moto still answers them.
            undo.callback(aws._stop_event_sources)
            yield aws
    finally:
        with _open_lock:
            _open = None


def _serve(aws: LocalAws, host: str, port: int | None, undo: contextlib.ExitStack) -> None:
    from moto.server import ThreadedMotoServer

    port = port or free_port(host)
    # Checked first: ThreadedMotoServer waits forever for a server that could not bind.
    ensure_port_free(host, port, "the moto server")
    # moto's Step Functions interpreter calls Lambda (and its tasks' other services) at
    # localhost:$MOTO_PORT.
    undo.enter_context(_environment(MOTO_PORT=str(port)))
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    undo.callback(server.stop)
    aws.endpoint_url, aws.port = f"http://{host}:{port}", port
    _post(aws.endpoint_url, "/moto-api/config", MOTO_CONFIG)
    # moto's backends are process-wide, not per server: without a reset the next door (a
    # test's) would find this one's resources, its stack name taken. Runs before the stop.
    undo.callback(_post, aws.endpoint_url, "/moto-api/reset", None)


def _post(endpoint_url: str, path: str, body: Any) -> None:
    request = urllib.request.Request(  # noqa: S310 (a fixed http URL on loopback)
        endpoint_url + path,
        data=json.dumps(body).encode() if body is not None else b"",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310
        pass


@contextlib.contextmanager
def _environment(**variables: str | None) -> Iterator[None]:
    """Set (or, for None, remove) these variables; put back exactly these on exit."""
    saved = {name: os.environ.get(name) for name in variables}
    for name, value in variables.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _patches(aws: LocalAws) -> list[Patch]:
    return [
        *_state_machine_creation(),
        *_rest_api_creation(),
        *_lambda_invoke(aws),
        *_rule_lambda_targets(),
        *_execution_history_paging(),
        *_stop_during_callback(),
        *_heartbeat_without_heartbeat_seconds(),
        *_interpreter_caches(),
        *_sqs_event_sources(aws),
        *_secrets_in_cloudformation(),
    ]


# --- Template adjustments (applied to the translated CloudFormation template) ----------------


def adjust_template(template: dict[str, Any]) -> dict[str, Any]:
    """A copy of a translated template that moto's CloudFormation can create."""
    adjusted = copy.deepcopy(template)
    resources: dict[str, Any] = adjusted.get("Resources", {})
    buses = {
        logical_id
        for logical_id, resource in resources.items()
        if resource.get("Type") == "AWS::Events::EventBus"
    }
    # Gap: moto's `Ref` of an AWS::Events::EventBus yields the model object instead of its name
    # (an EventBusName then fails with "'EventBus' object has no attribute 'split'"). On AWS the
    # Ref is the bus name, which is exactly `!GetAtt Bus.Name`.
    adjusted = _replace_refs(adjusted, buses, "Name")
    # Gap: moto's DescribeStackResources gives an EventBus no PhysicalResourceId. An output per
    # bus carries its name out of the stack instead (see `physical_ids_from_outputs`).
    outputs = adjusted.setdefault("Outputs", {})
    for logical_id in sorted(buses):
        outputs[_OUTPUT_PREFIX + logical_id] = {"Value": {"Fn::GetAtt": [logical_id, "Name"]}}
    # Gap: moto's CloudFormation skips resource types it does not model (the schema registry,
    # QueuePolicy, ApiGateway::Stage...) but crashes validating an Output that reads one
    # ("'NoneType' object has no attribute 'has_cfn_attr'"). Such outputs are left out.
    # Gap: `sam package` uploads a nested application's local template and points the stack at
    # it; moto's CloudFormation would fetch that TemplateURL from S3 and cannot create the nested
    # stack from a local path. Ours hold only what moto does not model either (the schema
    # registry; the optional ECS GPU service), so those nested stacks are left out, with their
    # outputs (below).
    nested_local = {
        logical_id
        for logical_id, resource in adjusted["Resources"].items()
        if resource.get("Type") == "AWS::CloudFormation::Stack"
        and not str((resource.get("Properties") or {}).get("TemplateURL", "")).startswith(
            ("https://", "s3://")
        )
    }
    for logical_id in sorted(nested_local):
        logger.info(
            "nested stack %s left out: moto cannot create it from a local template", logical_id
        )
        del adjusted["Resources"][logical_id]
    unmodelled = _unmodelled_resources(adjusted) | nested_local
    for name, output in list(outputs.items()):
        missing = _references(output.get("Value")) & unmodelled
        if missing:
            logger.info("output %s left out: moto does not model %s", name, sorted(missing))
            del outputs[name]
    for logical_id, resource in adjusted.get("Resources", {}).items():
        if resource.get("Type") == "AWS::ApiGateway::RestApi":
            properties = resource.setdefault("Properties", {})
            # Gap: moto requires `Name`, which SAM leaves out of the RestApi it generates
            # (AWS takes the title from the Body).
            properties.setdefault("Name", logical_id)
    return adjusted


def physical_ids_from_outputs(outputs: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(physical ids carried by our added outputs, the template's own outputs)."""
    carried = {
        k[len(_OUTPUT_PREFIX) :]: v for k, v in outputs.items() if k.startswith(_OUTPUT_PREFIX)
    }
    own = {k: v for k, v in outputs.items() if not k.startswith(_OUTPUT_PREFIX)}
    return carried, own


def _unmodelled_resources(template: dict[str, Any]) -> set[str]:
    from moto.cloudformation.parsing import get_model_map

    modelled = set(get_model_map()) | set(_LOCALLY_MODELLED)
    return {
        logical_id
        for logical_id, resource in (template.get("Resources") or {}).items()
        if resource.get("Type") not in modelled
    }


def _references(node: Any) -> set[str]:
    """Logical ids a template value reads through Ref, Fn::GetAtt or Fn::Sub."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) else str(value).split(".", 1)[0]
                found.add(str(target))
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                if isinstance(text, str):
                    found |= {m.split(".", 1)[0] for m in re.findall(r"\$\{([^}!]+)\}", text)}
                if isinstance(value, list):
                    found |= _references(value[1:])
            found |= _references(value)
    elif isinstance(node, list):
        for item in node:
            found |= _references(item)
    return found


def _replace_refs(node: Any, logical_ids: set[str], attribute: str) -> Any:
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] in logical_ids:
            return {"Fn::GetAtt": [node["Ref"], attribute]}
        return {key: _replace_refs(value, logical_ids, attribute) for key, value in node.items()}
    if isinstance(node, list):
        return [_replace_refs(item, logical_ids, attribute) for item in node]
    return node


def parameters_with_list_defaults(
    declared: dict[str, Any], overrides: dict[str, str]
) -> dict[str, str]:
    """``overrides`` plus the default of every list-typed parameter not overridden.

    Gap: moto splits a CommaDelimitedList (or List<...>) parameter into a list only when it is
    passed in, not when it takes its Default; `!Join [",", !Ref P]` then joins the characters of
    the string. Passing the defaults explicitly gets them split.
    """
    merged = dict(overrides)
    for name, declaration in declared.items():
        kind = str(declaration.get("Type", "String"))
        is_list = kind == "CommaDelimitedList" or kind.startswith("List<")
        if is_list and name not in merged and "Default" in declaration:
            merged[name] = str(declaration["Default"])
    return merged


def placeholder_code_zip() -> bytes:
    """A zip to stand for a function's or layer's code.

    Gap: moto's CloudFormation creates AWS::Lambda::Function/LayerVersion only when the code
    object exists in S3. Our code never runs from it (see the Lambda dispatch below), so the
    artifact bucket holds this placeholder under every key the template names.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("README.txt", "imagegen local stack: code runs in-process from the repo\n")
    return buffer.getvalue()


# --- Patches of moto's classes (applied by the door, undone when it closes) ---------------------


def substitute_definition(definition: str, substitutions: dict[str, Any]) -> str:
    """Apply DefinitionSubstitutions as Step Functions does: each ``${key}`` by its value."""
    for key, value in substitutions.items():
        definition = definition.replace("${" + key + "}", str(value))
    return definition


def _state_machine_creation() -> list[Patch]:
    from moto.stepfunctions.models import StateMachine, stepfunctions_backends
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    def create_from_cloudformation_json(
        cls: type[StateMachine],
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        properties = cloudformation_json["Properties"]
        definition = properties.get("DefinitionString", "")
        if not isinstance(definition, str):
            definition = json.dumps(properties.get("Definition", definition))
        # Gap 1: moto ignores DefinitionSubstitutions (the ASL would keep "${...}" in its ARNs).
        # By now moto has resolved the values' intrinsics, so they are plain strings.
        definition = substitute_definition(
            definition, properties.get("DefinitionSubstitutions") or {}
        )
        # Gap 2: moto's CloudFormation creates the machine in the plain Step Functions backend,
        # while execute mode (MOTO_CONFIG) reads, and runs executions from, the parser backend.
        backend: Any = stepfunctions_parser_backends[account_id][region_name]
        return backend.create_state_machine(
            properties.get("StateMachineName", resource_name),
            definition,
            properties.get("RoleArn", ""),
            tags=[{"key": t["Key"], "value": t["Value"]} for t in properties.get("Tags", [])],
            sm_type=properties.get("StateMachineType"),
        )

    def delete_from_cloudformation_json(
        cls: type[StateMachine],
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> None:
        for backends in (stepfunctions_backends, stepfunctions_parser_backends):
            backend: Any = backends[account_id][region_name]
            for machine in list(backend.state_machines):
                if resource_name in (machine.arn, machine.name):
                    backend.delete_state_machine(machine.arn)

    return [
        (
            StateMachine,
            "create_from_cloudformation_json",
            classmethod(create_from_cloudformation_json),
        ),
        (
            StateMachine,
            "delete_from_cloudformation_json",
            classmethod(delete_from_cloudformation_json),
        ),
    ]


def _rest_api_creation() -> list[Patch]:
    from moto.apigateway.models import RestAPI, apigateway_backends

    original = RestAPI.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create_from_cloudformation_json(
        cls: type[RestAPI],
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> RestAPI:
        api = original(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        body = cloudformation_json["Properties"].get("Body")
        if isinstance(body, dict) and body.get("paths"):
            # Gap: moto ignores `Body`, so the API would have no resources or methods (and its
            # Deployment fails with "The REST API doesn't contain any methods"). moto imports
            # only OpenAPI 3 while SAM writes Swagger 2.0: the paths and integrations, which is
            # all moto reads, are the same in both.
            document = {
                "openapi": "3.0.1",
                "info": body.get("info") or {"title": resource_name, "version": "1.0"},
                "paths": body["paths"],
            }
            try:
                apigateway_backends[account_id][region_name].put_rest_api(
                    api.id, document, fail_on_warnings=False, mode="overwrite"
                )
            except Exception as error:  # moto implements a subset of OpenAPI: keep the API
                logger.warning("moto could not import the body of %s: %s", resource_name, error)
        return api

    return [
        (RestAPI, "create_from_cloudformation_json", classmethod(create_from_cloudformation_json))
    ]


def _lambda_invoke(aws: LocalAws) -> list[Patch]:
    from moto.awslambda_simple.models import LambdaSimpleBackend

    original = LambdaSimpleBackend.invoke

    def invoke(
        self: LambdaSimpleBackend,
        function_name: str,
        qualifier: str | None,
        body: Any,
        headers: Any,
        response_headers: Any,
    ) -> str | bytes | None:
        # Gap: without Docker, moto's Lambda echoes the request instead of running code. The
        # functions registered with the door run our handlers instead; a handler's exception is
        # reported the way Lambda does (the x-amz-function-error header and an {errorType,
        # errorMessage} payload), so the state machine's Retry and Catch match the exception's
        # class name.
        try:
            name = self.get_function(function_name, qualifier).function_name
        except Exception:  # unknown to moto: let moto answer as it would
            return original(self, function_name, qualifier, body, headers, response_headers)
        dispatch = aws._dispatchers.get(name)
        if dispatch is None:
            return original(self, function_name, qualifier, body, headers, response_headers)
        raw = body if isinstance(body, bytes) else (body or "").encode()
        payload, function_error = dispatch(raw, dict(headers or {}))
        if function_error:
            response_headers["x-amz-function-error"] = function_error
        return payload

    return [(LambdaSimpleBackend, "invoke", invoke)]


def _rule_lambda_targets() -> list[Patch]:
    from moto.awslambda.utils import get_backend as lambda_backend
    from moto.core.utils import iso_8601_datetime_without_milliseconds, utcfromtimestamp
    from moto.events.models import Rule
    from moto.utilities.arns import parse_arn

    original = Rule.send_to_targets

    def send_to_targets(self: Rule, original_event: Any, transform_input: bool = True) -> None:
        # Gap: moto's EventBridge delivers to SQS, logs and buses, but raises NotImplementedError
        # ("Expr not defined for Rule") for a Lambda target, which fails the state machine's
        # events:putEvents task. Lambda targets are invoked asynchronously (as EventBridge does)
        # through moto's Lambda, i.e. our handler; the other targets go to moto.
        if not self.event_pattern.matches_event(original_event):
            return
        lambda_targets = [t for t in self.targets if parse_arn(t["Arn"]).service == "lambda"]
        if len(lambda_targets) < len(self.targets):
            others = copy.copy(self)
            others.targets = [t for t in self.targets if t not in lambda_targets]
            original(others, original_event, transform_input)
        for target in lambda_targets:
            event = dict(original_event)
            if "time" in event and not isinstance(event["time"], str):
                event["time"] = iso_8601_datetime_without_milliseconds(
                    utcfromtimestamp(float(event["time"]))  # type: ignore[arg-type]
                )
            payload = target["Input"] if "Input" in target else json.dumps(event)
            arn = parse_arn(target["Arn"])
            backend = lambda_backend(arn.account, arn.region)
            threading.Thread(
                target=_invoke_event_target,
                args=(backend, target["Arn"], payload),
                name=f"eventbridge-{self.name}",
                daemon=True,
            ).start()

    return [(Rule, "send_to_targets", send_to_targets)]


def _invoke_event_target(backend: Any, function_arn: str, payload: str) -> None:
    try:
        backend.invoke(function_arn, None, payload, {"X-Amz-Invocation-Type": "Event"}, {})
    except Exception:  # an asynchronous target's failure never reaches the sender
        logger.exception("EventBridge target %s failed", function_arn)


def _execution_history_paging() -> list[Patch]:
    from moto.core.responses import ActionResult
    from moto.stepfunctions.responses import StepFunctionResponse

    def get_execution_history(self: StepFunctionResponse) -> ActionResult:
        # Gap: moto ignores GetExecutionHistory's reverseOrder, maxResults and nextToken (it
        # always answers every event, oldest first), so "the latest state entered" reads the
        # first one. Applied here to what moto returns.
        history = dict(
            self.stepfunction_backend.get_execution_history(self._get_param("executionArn"))
        )
        events = list(history.get("events", []))
        if self._get_param("reverseOrder"):
            events.reverse()
        start = int(self._get_param("nextToken") or 0)
        page_size = int(self._get_param("maxResults") or 0) or 1000
        history["events"] = events[start : start + page_size]
        history.pop("nextToken", None)
        if start + page_size < len(events):
            history["nextToken"] = str(start + page_size)
        return ActionResult(history)

    return [(StepFunctionResponse, "get_execution_history", get_execution_history)]


def _stop_during_callback() -> list[Patch]:
    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackConsumerTimeout
    from moto.stepfunctions.parser.backend.execution import (
        BaseExecutionWorkerCommunication,
        Execution,
    )

    original_stop = Execution.stop
    original_reflect = BaseExecutionWorkerCommunication._reflect_execution_status

    def stop(self: Execution, *args: Any, **kwargs: Any) -> None:
        self._imagegen_stop_requested = True  # type: ignore[attr-defined]
        # Gap: moto's worker thread parses the definition before it creates its environment,
        # and a StopExecution in that window fails ("'NoneType' object has no attribute
        # 'set_stop'"). AWS accepts a stop at any time: wait for the environment to exist.
        worker = self.exec_worker
        deadline = time.monotonic() + 5
        while worker is not None and worker.env is None and time.monotonic() < deadline:
            time.sleep(0.01)
        original_stop(self, *args, **kwargs)
        # Gap: moto applies StopExecution only when the current state ends, so a state waiting
        # on `.waitForTaskToken` (a GPU job still queued, with no heartbeat timeout) would keep
        # the execution RUNNING until its deadline. On AWS the stop is immediate, and the task's
        # token answers TaskTimedOut from then on. Both are done here: every callback of the
        # execution is marked timed out for its consumers and its wait is interrupted.
        if worker is not None and worker.env is not None:
            for endpoint in list(worker.env.callback_pool_manager._pool.values()):
                endpoint.report(CallbackConsumerTimeout())
                endpoint.interrupt_all()

    def reflect_execution_status(self: BaseExecutionWorkerCommunication) -> None:
        # Gap: depending on which thread wins, a stopped execution reads FAILED (the interrupted
        # callback's States.Timeout, or an internal error of a stopped Map) instead of ABORTED.
        # On AWS a stopped execution is ABORTED, whatever it was waiting on.
        original_reflect(self)
        execution = self.execution
        stopped = getattr(execution, "_imagegen_stop_requested", False)
        if stopped and execution.exec_status == ExecutionStatus.FAILED:
            execution.exec_status = ExecutionStatus.ABORTED
            execution.error = None
            execution.cause = None
        _publish_status_change(execution)

    return [
        (Execution, "stop", stop),
        (BaseExecutionWorkerCommunication, "_reflect_execution_status", reflect_execution_status),
    ]


def _heartbeat_without_heartbeat_seconds() -> list[Patch]:
    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackEndpoint

    original = CallbackEndpoint.notify_heartbeat

    def notify_heartbeat(self: CallbackEndpoint) -> bool:
        # Gap: moto answers InvalidToken to SendTaskHeartbeat for a running task whose state has
        # no HeartbeatSeconds ("Generate on GPU" has none); AWS accepts a heartbeat for any
        # running task. The GPU worker reads InvalidToken as "the task has ended".
        if self._heartbeat_endpoint is None:
            return True
        return bool(original(self))

    return [(CallbackEndpoint, "notify_heartbeat", notify_heartbeat)]


def _interpreter_caches() -> list[Patch]:
    """Gap (cost, not behaviour): moto's interpreter parses the ASL again for every execution
    (0.1-0.2 s of CPU each) and builds a new boto3 client for every task. With a hundred jobs at
    once on a small machine that alone pushes requests past API Gateway's 29 s. Both are cached
    while the door is open: a parsed program keeps its per-execution state in each execution's
    environment, not in the program, and boto3 clients are safe to share between threads once
    built."""
    import sys

    # Importing the factory loads every service integration that calls boto_client_for.
    import moto.stepfunctions.parser.asl.component.state.exec.state_task.lambda_eval_utils
    import moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_factory  # noqa: F401, E501
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.utils import boto_client

    original_parse = AmazonStateLanguageParser.parse
    parsed: dict[str, Any] = {}
    parse_lock = threading.Lock()

    def parse(definition: str) -> Any:
        with parse_lock:
            if definition not in parsed:
                parsed[definition] = original_parse(definition)
            return parsed[definition]

    original_client_for = boto_client.boto_client_for
    clients: dict[tuple[Any, ...], Any] = {}
    client_lock = threading.Lock()

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        if state_credentials is not None:  # a state with its own credentials: not shared
            return original_client_for(region, service, state_credentials)
        from moto.core.models import botocore_stubber
        from moto.settings import moto_server_port

        key = (region, service, botocore_stubber.enabled, moto_server_port())
        with client_lock:
            if key not in clients:
                clients[key] = original_client_for(region, service)
            return clients[key]

    patches: list[Patch] = [(AmazonStateLanguageParser, "parse", staticmethod(parse))]
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if name.startswith("moto.stepfunctions.parser") and (
            getattr(module, "boto_client_for", None) is original_client_for
        ):
            patches.append((module, "boto_client_for", boto_client_for))
    return patches


def _sqs_event_sources(aws: LocalAws) -> list[Patch]:
    from moto.awslambda.models import LambdaBackend
    from moto.sqs.models import sqs_backends

    original = LambdaBackend.create_event_source_mapping

    def create_event_source_mapping(self: LambdaBackend, spec: dict[str, Any]) -> Any:
        mapping = original(self, spec)
        # Gap: moto invokes a function with an SQS event source as each message is sent, once,
        # with ApproximateReceiveCount "1", and deletes the message unless the whole invocation
        # failed: it ignores batchItemFailures (ReportBatchItemFailures) and the visibility a
        # function sets, so retries with backoff and the redrive to a dead-letter queue never
        # happen. The mapping is taken off moto's queue and polled instead, as Lambda does
        # (sqs_event_sources); it stays listed in moto's Lambda.
        for queue in sqs_backends[self.account_id][self.region_name].queues.values():
            if queue.queue_arn == mapping.event_source_arn:
                queue.lambda_event_source_mappings.pop(mapping.function_arn, None)
                aws._start_event_source(
                    SqsEventSource(
                        queue_arn=queue.queue_arn,
                        function_name=mapping.function_arn.split(":")[6],
                        batch_size=int(mapping.batch_size or 10),
                        report_batch_item_failures="ReportBatchItemFailures"
                        in (mapping.function_response_types or []),
                    )
                )
        return mapping

    return [(LambdaBackend, "create_event_source_mapping", create_event_source_mapping)]


_LOCALLY_MODELLED = ("AWS::SecretsManager::Secret",)
"""Resource types moto's CloudFormation does not model and this module creates."""


class _CloudFormationSecret:
    """Gap: moto's CloudFormation skips ``AWS::SecretsManager::Secret`` (moto's Secrets Manager
    exists, its CloudFormation model does not), so a ``Ref`` to one yields nothing usable. This
    creates the secret in moto's Secrets Manager, its value from ``SecretString`` or generated as
    ``GenerateSecretString`` says; ``Ref`` and ``Fn::GetAtt Id`` give its ARN, as on AWS."""

    def __init__(self, arn: str) -> None:
        self.physical_resource_id = arn
        self.arn = arn

    @staticmethod
    def has_cfn_attr(attribute: str) -> bool:
        return attribute == "Id"

    def is_created(self) -> bool:
        return True

    def get_cfn_attribute(self, attribute: str) -> str:
        return self.arn

    @classmethod
    def create_from_cloudformation_json(
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> _CloudFormationSecret:
        from moto.secretsmanager.models import secretsmanager_backends

        backend = secretsmanager_backends[account_id][region_name]
        properties = cloudformation_json.get("Properties") or {}
        value = properties.get("SecretString")
        generate = properties.get("GenerateSecretString")
        if value is None and isinstance(generate, dict):
            value = json.loads(
                backend.get_random_password(
                    password_length=int(generate.get("PasswordLength", 32)),
                    exclude_characters=str(generate.get("ExcludeCharacters", "")),
                    exclude_numbers=_flag(generate.get("ExcludeNumbers")),
                    exclude_punctuation=_flag(generate.get("ExcludePunctuation")),
                    exclude_uppercase=_flag(generate.get("ExcludeUppercase")),
                    exclude_lowercase=_flag(generate.get("ExcludeLowercase")),
                    include_space=_flag(generate.get("IncludeSpace")),
                    require_each_included_type=_flag(generate.get("RequireEachIncludedType", True)),
                )
            )["RandomPassword"]
            if generate.get("SecretStringTemplate") and generate.get("GenerateStringKey"):
                document = json.loads(generate["SecretStringTemplate"])
                document[generate["GenerateStringKey"]] = value
                value = json.dumps(document)
        created = json.loads(
            backend.create_secret(
                name=str(properties.get("Name") or resource_name),
                secret_string=value,
                secret_binary=None,
                description=properties.get("Description"),
                tags=properties.get("Tags"),
                kms_key_id=properties.get("KmsKeyId"),
                client_request_token=None,
                replica_regions=[],
                force_overwrite=False,
            )
        )
        return cls(created["ARN"])

    @classmethod
    def delete_from_cloudformation_json(
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> None:
        return None  # leaving the door resets moto's backends


def _flag(value: Any) -> bool:
    return str(value).lower() == "true" if isinstance(value, str) else bool(value)


def _secrets_in_cloudformation() -> list[Patch]:
    import moto.cloudformation.parsing as parsing

    original = parsing.resource_class_from_type

    def resource_class_from_type(resource_type: str) -> Any:
        if resource_type == "AWS::SecretsManager::Secret":
            return _CloudFormationSecret
        return original(resource_type)

    return [(parsing, "resource_class_from_type", resource_class_from_type)]


STATUS_CHANGE_DETAIL_TYPE = "Step Functions Execution Status Change"


def _publish_status_change(execution: Any) -> None:
    """Gap: moto publishes no "Step Functions Execution Status Change" events. AWS puts one on
    the account's default bus whenever a Standard execution changes status; the terminal ones
    are published here in AWS's shape, so rules on them (ReportJobEndingFunction's) work
    locally. RUNNING is not published: nothing here subscribes to it."""
    from moto.events.models import events_backends

    status = str(getattr(execution.exec_status, "value", execution.exec_status))
    if status == "RUNNING":
        return

    def millis(moment: Any) -> int | None:
        return int(moment.timestamp() * 1000) if moment is not None else None

    detail = {
        "executionArn": execution.exec_arn,
        "stateMachineArn": execution.state_machine_arn,
        "name": execution.name,
        "status": status,
        "startDate": millis(execution.start_date),
        "stopDate": millis(execution.stop_date),
        "input": json.dumps(execution.input_data),
        "inputDetails": {"included": True},
        "output": json.dumps(execution.output) if execution.output is not None else None,
        "outputDetails": {"included": True} if execution.output is not None else None,
        "error": execution.error,
        "cause": execution.cause,
    }
    try:
        events_backends[execution.account_id][execution.region_name].put_events(
            [
                {
                    "Source": "aws.states",
                    "DetailType": STATUS_CHANGE_DETAIL_TYPE,
                    "Detail": json.dumps(detail),
                    "Resources": [execution.exec_arn],
                }
            ]
        )
    except Exception:  # as on AWS, delivery trouble never changes the execution
        logger.exception("publishing the status change of %s failed", execution.exec_arn)
