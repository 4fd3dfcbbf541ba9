"""Schemathesis against the ApiFunction in-process: what the document says is what it answers.

Cases generated from the served OpenAPI document (valid and invalid) go through a small WSGI
adapter that turns each into an API Gateway proxy event for ``lambda_handler``, under moto.
The checks are the ones run against the local stack: no 5xx, only declared statuses, bodies and
content types as declared. Bounded: few examples per operation, no deadline, no database.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

import boto3
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from moto import mock_aws
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import REPO_ROOT, FakeLambdaContext, import_function, load_event
from tests.jobs_table import create_jobs_table

PASS_DEFINITION = json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}})
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]
MAX_EXAMPLES = 25

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class ProxyEventApp:
    """A WSGI app that hands each request to a Lambda proxy handler, as API Gateway does."""

    def __init__(self, handler: Callable[[dict[str, Any], Any], dict[str, Any]]) -> None:
        self.handler = handler
        self.resources = [*sorted({path for _, path in OPERATIONS}, key=len), "/openapi.json"]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        response = self.handler(self.event_of(environ), FakeLambdaContext())
        body = response.get("body") or ""
        raw = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
        headers = [
            (name, value)
            for name, values in (response.get("multiValueHeaders") or {}).items()
            for value in values
        ] + list((response.get("headers") or {}).items())
        status = int(response["statusCode"])
        start_response(f"{status} {'OK' if status < 400 else 'Error'}", headers)
        return [raw]

    def event_of(self, environ: dict[str, Any]) -> dict[str, Any]:
        event = copy.deepcopy(load_event("api_post_generate.json"))
        path = environ.get("PATH_INFO") or "/"
        headers = {
            name[5:].replace("_", "-").title(): value
            for name, value in environ.items()
            if name.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            body: str | None = raw.decode("utf-8") if raw else None
            is_base64 = False
        except UnicodeDecodeError:
            body, is_base64 = base64.b64encode(raw).decode(), True
        resource, parameters = self.route_of(path)
        query = parse_qs(environ.get("QUERY_STRING") or "", keep_blank_values=True)
        event.update(
            queryStringParameters={name: values[-1] for name, values in query.items()} or None,
            multiValueQueryStringParameters=query or None,
        )
        event.update(
            resource=resource,
            path=path,
            httpMethod=environ["REQUEST_METHOD"],
            headers=headers,
            multiValueHeaders={name: [value] for name, value in headers.items()},
            pathParameters=parameters,
            body=body,
            isBase64Encoded=is_base64,
        )
        return event

    def route_of(self, path: str) -> tuple[str, dict[str, str] | None]:
        for resource in self.resources:
            pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", resource)
            match = re.fullmatch(pattern, path)
            if match:
                return resource, match.groupdict() or None
        return path, None


@pytest.fixture
def api_schema(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with mock_aws():
        machine = boto3.client("stepfunctions").create_state_machine(
            name="imagegen-test",
            definition=PASS_DEFINITION,
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )
        boto3.client("s3").create_bucket(Bucket="images")
        queue_url = boto3.client("sqs").create_queue(QueueName="gpu-jobs")["QueueUrl"]
        boto3.client("sqs").send_message(QueueUrl=queue_url, MessageBody="a waiting job")
        monkeypatch.setenv("STATE_MACHINE_ARN", machine["stateMachineArn"])
        monkeypatch.setenv("IMAGES_BUCKET", "images")
        monkeypatch.setenv("GPU_QUEUE_URL", queue_url)
        monkeypatch.setenv("GPU_MAX_BACKLOG", "1")  # every GPU job gets 429: that path too
        monkeypatch.setenv("JOBS_TABLE_NAME", create_jobs_table())
        api = import_function("api")
        yield schemathesis.openapi.from_wsgi("/openapi.json", ProxyEventApp(api.lambda_handler))


# Every operation of the saved document (which test_api.py holds equal to the served one): a new
# route is fuzzed from the day it is documented.
OPERATIONS = sorted(
    (method.upper(), path)
    for path, item in json.loads((REPO_ROOT / "docs" / "openapi.json").read_text())["paths"].items()
    for method in item
)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_api_answers_as_its_openapi_document_says(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    # schemathesis' own pytest integration needs a pytest private that 9.x removed: drive
    # Hypothesis directly, one operation and one generation mode per test.
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def answers_as_documented(case: Any) -> None:
        # A path parameter the negative mode makes empty ("/generate/") names another route,
        # whose answer this operation's schema does not describe: not this operation's case.
        assume(all(str(value) not in {"", ".", ".."} for value in case.path_parameters.values()))
        case.call_and_validate(checks=CHECKS)

    answers_as_documented()
