"""The local API Gateway stand-in: routes, proxy events, responses, gateway responses."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventModel

from imagegen.local.api_gateway import (
    GatewayResponse,
    GatewayResponseType,
    LocalApiGateway,
    MalformedProxyResponse,
    build_proxy_event,
    gateway_responses_from_body,
    match_route,
    proxy_response,
)
from imagegen.local.deploy import ApiRoute, DeployedStack
from imagegen.local.lambda_runtime import LambdaRuntime

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS = REPO_ROOT / "events"

ROUTES = [
    ApiRoute("Api", "POST", "/generate", "ApiFunction"),
    ApiRoute("Api", "GET", "/generate/{execution_id}", "ApiFunction"),
    ApiRoute("Api", "DELETE", "/generate/{execution_id}", "ApiFunction"),
    ApiRoute("Api", "GET", "/generate/latest", "OtherFunction"),
    ApiRoute("Api", "ANY", "/files/{proxy+}", "FilesFunction"),
]


def test_routes_match_methods_parameters_and_literals_first() -> None:
    found = match_route(ROUTES, "GET", "/generate/abc%20d")
    assert found is not None
    assert found.route.resource == "/generate/{execution_id}"
    assert found.path_parameters == {"execution_id": "abc d"}

    literal = match_route(ROUTES, "GET", "/generate/latest")
    assert literal is not None and literal.route.function_logical_id == "OtherFunction"

    greedy = match_route(ROUTES, "PUT", "/files/a/b.png")
    assert greedy is not None and greedy.path_parameters == {"proxy": "a/b.png"}

    assert match_route(ROUTES, "PUT", "/generate") is None
    assert match_route(ROUTES, "GET", "/nothing") is None


def make_event(**overrides: Any) -> dict[str, Any]:
    match = match_route(ROUTES, "GET", "/generate/exec-1")
    assert match is not None
    arguments: dict[str, Any] = {
        "method": "GET",
        "path": "/generate/exec-1",
        "query": "verbose=1&tag=a&tag=b",
        "headers": [("Host", "127.0.0.1:3000"), ("x-api-key", "secret"), ("User-Agent", "t")],
        "body": b"",
        "match": match,
        "stage": "v1",
        "api_id": "abc123",
    }
    arguments.update(overrides)
    return build_proxy_event(**arguments)


def test_proxy_event_has_the_shape_api_gateway_sends() -> None:
    event = make_event()
    sample = json.loads((EVENTS / "api_get_generate.json").read_text())

    assert set(event) == set(sample)
    assert set(event["requestContext"]) >= set(sample["requestContext"])
    assert set(event["requestContext"]["identity"]) >= set(sample["requestContext"]["identity"])
    APIGatewayProxyEventModel.model_validate(event)
    assert event["resource"] == "/generate/{execution_id}"
    assert event["pathParameters"] == {"execution_id": "exec-1"}
    assert event["queryStringParameters"] == {"verbose": "1", "tag": "b"}
    assert event["multiValueQueryStringParameters"]["tag"] == ["a", "b"]
    context = event["requestContext"]
    assert context["stage"] == "v1"
    assert context["path"] == "/v1/generate/exec-1"
    assert context["resourcePath"] == "/generate/{execution_id}"
    assert context["identity"]["apiKey"] == "secret"
    assert context["identity"]["apiKeyId"] and context["identity"]["apiKeyId"] != "secret"
    assert event["headers"]["X-Forwarded-Proto"] == "http"


def test_same_api_key_gives_the_same_key_id_and_none_without_a_key() -> None:
    first = make_event()["requestContext"]["identity"]["apiKeyId"]
    assert make_event()["requestContext"]["identity"]["apiKeyId"] == first
    no_key = make_event(headers=[("Host", "127.0.0.1:3000")])
    assert no_key["requestContext"]["identity"]["apiKeyId"] is None


def test_binary_bodies_are_base64_encoded() -> None:
    event = make_event(method="POST", body=b"\x89PNG", headers=[("Content-Type", "image/png")])
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x89PNG"


def test_proxy_responses_and_malformed_ones() -> None:
    response = proxy_response(
        {
            "statusCode": 202,
            "headers": {"Content-Type": "application/json"},
            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
            "body": '{"ok": true}',
        }
    )
    assert response.status == 202
    assert ("Set-Cookie", "b=2") in response.headers
    assert json.loads(response.body) == {"ok": True}

    binary = proxy_response({"statusCode": 200, "body": "iVBORw==", "isBase64Encoded": True})
    assert binary.body == base64.b64decode("iVBORw==")

    with pytest.raises(MalformedProxyResponse):
        proxy_response({"body": "no status"})


# --- Gateway responses -------------------------------------------------------------------------


API_BODY = {
    "x-amazon-apigateway-gateway-responses": {
        "DEFAULT_5XX": {
            "responseParameters": {
                "gatewayresponse.header.Content-Type": "'application/json'",
                "gatewayresponse.header.X-Echo": "method.request.header.x-trace",
            },
            "responseTemplates": {
                "application/json": '{"error": {"code": "INTERNAL_ERROR", '
                '"message": $context.error.messageString, "type": "${context.error.responseType}", '
                '"id": "$context.requestId", "unknown": "$context.nothing"}}'
            },
        },
        "MISSING_AUTHENTICATION_TOKEN": {"statusCode": "404", "responseTemplates": {}},
    }
}


def fixture_gateway(responses: dict[str, GatewayResponse]) -> LocalApiGateway:
    stack = DeployedStack(
        stack_name="s",
        region="us-east-1",
        template_path=Path("unused.yaml"),
        resources={},
        outputs={},
        buckets={},
        queues={},
        event_buses={},
        state_machines={},
        functions={},
        routes=[ApiRoute("Api", "GET", "/x", "XFunction")],
        stages={},
    )
    return LocalApiGateway(stack, LambdaRuntime(), gateway_responses={"Api": responses})


def test_gateway_responses_are_rendered_from_the_api_definition() -> None:
    gateway = fixture_gateway(gateway_responses_from_body(API_BODY))

    failed = gateway.error(
        GatewayResponseType.DEFAULT_5XX, headers=[("X-Trace", "t-1")], request_id="req-1"
    )
    assert failed.status == 502
    assert json.loads(failed.body) == {
        "error": {
            "code": "INTERNAL_ERROR",
            "message": "Internal server error",
            "type": "DEFAULT_5XX",
            "id": "req-1",
            "unknown": "$context.nothing",
        }
    }
    assert ("X-Echo", "t-1") in failed.headers
    assert ("x-amzn-RequestId", "req-1") in failed.headers
    # INTEGRATION_TIMEOUT is not declared: DEFAULT_5XX answers, with the type's own status.
    timed_out = gateway.error(GatewayResponseType.INTEGRATION_TIMEOUT)
    assert timed_out.status == 504
    assert json.loads(timed_out.body)["error"]["message"] == "Endpoint request timed out"
    # A declared response without a template: API Gateway's own body, the declared status.
    missing = gateway.error(GatewayResponseType.MISSING_AUTHENTICATION_TOKEN)
    assert missing.status == 404
    assert json.loads(missing.body) == {"message": "Missing Authentication Token"}


def test_without_gateway_responses_the_answer_is_the_one_error_shape() -> None:
    gateway = fixture_gateway({})

    too_large = gateway.error(GatewayResponseType.REQUEST_TOO_LARGE)

    assert too_large.status == 413
    assert json.loads(too_large.body) == {
        "error": {"code": "PAYLOAD_TOO_LARGE", "message": "Request Too Long"}
    }
