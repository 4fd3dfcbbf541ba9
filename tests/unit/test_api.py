"""ApiFunction against moto: submit, idempotency, ownership, validation errors, cancel, OpenAPI."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.conftest import REPO_ROOT, import_function, load_event

PASS_DEFINITION = json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}})


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with mock_aws():
        sfn = boto3.client("stepfunctions")
        machine = sfn.create_state_machine(
            name="imagegen-test",
            definition=PASS_DEFINITION,
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )
        boto3.client("s3").create_bucket(Bucket="images")
        boto3.client("events").create_event_bus(Name="imagegen-bus")
        monkeypatch.setenv("STATE_MACHINE_ARN", machine["stateMachineArn"])
        monkeypatch.setenv("IMAGES_BUCKET", "images")
        monkeypatch.setenv("EVENT_BUS_NAME", "imagegen-bus")
        yield import_function("api")


def call(api: Any, event: dict[str, Any], lambda_context: Any) -> tuple[int, dict[str, Any]]:
    response = api.lambda_handler(event, lambda_context)
    return response["statusCode"], json.loads(response["body"])


def post_event(
    body: Any, api_key_id: str = "key-a", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    event = copy.deepcopy(load_event("api_post_generate.json"))
    event["body"] = body if isinstance(body, str) else json.dumps(body)
    event["requestContext"]["identity"]["apiKeyId"] = api_key_id
    event["headers"].update(headers or {})
    return event


def get_event(execution_id: str, api_key_id: str = "key-a", method: str = "GET") -> dict[str, Any]:
    name = "api_get_generate.json" if method == "GET" else "api_delete_generate.json"
    event = copy.deepcopy(load_event(name))
    event["pathParameters"] = {"execution_id": execution_id}
    event["path"] = f"/generate/{execution_id}"
    event["requestContext"]["identity"]["apiKeyId"] = api_key_id
    return event


def test_post_generate_starts_an_execution_and_answers_202(api: Any, lambda_context: Any) -> None:
    status, body = call(
        api, post_event({"prompt": "  a red fox  ", "num_images": 2}), lambda_context
    )

    assert status == 202
    assert body["status_url"].endswith(f"/generate/{body['execution_id']}")
    execution = boto3.client("stepfunctions").describe_execution(
        executionArn=api.settings.state_machine_arn.replace(":stateMachine:", ":execution:")
        + ":"
        + body["execution_id"]
    )
    job = json.loads(execution["input"])["job"]
    assert job["owner"] == "apikey:key-a"
    assert job["request"]["prompt"] == "a red fox"  # trimmed
    assert job["request"]["num_images"] == 2


def test_idempotency_key_returns_the_same_execution(api: Any, lambda_context: Any) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = call(api, post_event({"prompt": "a lighthouse"}, headers=headers), lambda_context)
    second = call(api, post_event({"prompt": "a lighthouse"}, headers=headers), lambda_context)
    other_caller = call(
        api,
        post_event({"prompt": "a lighthouse"}, api_key_id="key-b", headers=headers),
        lambda_context,
    )

    assert first[0] == second[0] == 202
    assert first[1]["execution_id"] == second[1]["execution_id"]
    assert other_caller[1]["execution_id"] != first[1]["execution_id"]


def test_idempotency_key_reused_with_another_request_is_a_conflict(
    api: Any, lambda_context: Any
) -> None:
    headers = {"Idempotency-Key": "order-43"}
    call(api, post_event({"prompt": "a lighthouse"}, headers=headers), lambda_context)
    status, body = call(api, post_event({"prompt": "a windmill"}, headers=headers), lambda_context)

    assert status == 409
    assert body["error"]["code"] == "CONFLICT"


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"prompt": "   "}, "prompt", "string_too_short"),
        ({"prompt": "x" * 1001}, "prompt", "string_too_long"),
        ({}, "prompt", "missing"),
        ({"prompt": "ok", "num_images": 5}, "num_images", "less_than_equal"),
        ({"prompt": "ok", "backend": "tpu"}, "backend", "enum"),
        ({"prompt": "ok", "seed": -1}, "seed", "greater_than_equal"),
        ({"prompt": "ok", "colour": "red"}, "colour", "extra_forbidden"),
    ],
)
def test_bad_body_gets_422_naming_the_field_and_rule(
    api: Any, lambda_context: Any, body: dict[str, Any], field: str, rule: str
) -> None:
    status, answer = call(api, post_event(body), lambda_context)

    assert status == 422
    assert answer["error"]["code"] == "VALIDATION_ERROR"
    assert {"field": field, "rule": rule} in [
        {"field": item["field"], "rule": item["rule"]} for item in answer["error"]["fields"]
    ]


def test_body_that_is_not_json_gets_422(api: Any, lambda_context: Any) -> None:
    status, answer = call(api, post_event("{not json"), lambda_context)
    assert status == 422
    assert answer["error"]["code"] == "VALIDATION_ERROR"


def test_model_outside_the_allow_list_gets_422_listing_allowed(
    api: Any, lambda_context: Any
) -> None:
    status, answer = call(
        api, post_event({"prompt": "ok", "model_id": "acme.painter-v1"}), lambda_context
    )

    assert status == 422
    assert answer["error"]["fields"][0]["field"] == "model_id"
    assert "stability.stable-image-core-v1:1" in answer["error"]["message"]


def test_size_without_an_aspect_ratio_of_the_model_gets_422(
    api: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLOWED_SIZES", "1024x1024,1024x640")
    fresh = import_function("api")
    status, answer = call(
        fresh, post_event({"prompt": "ok", "width": 1024, "height": 640}), lambda_context
    )

    assert status == 422
    assert answer["error"]["code"] == "INVALID_PROMPT"
    assert "1:1" in answer["error"]["message"]  # lists the model's aspect ratios


def test_nothing_is_started_when_the_request_is_rejected(api: Any, lambda_context: Any) -> None:
    call(api, post_event({"prompt": ""}), lambda_context)
    executions = boto3.client("stepfunctions").list_executions(
        stateMachineArn=api.settings.state_machine_arn
    )["executions"]
    assert executions == []


def test_get_reports_running_and_hides_other_callers_jobs(api: Any, lambda_context: Any) -> None:
    _, accepted = call(api, post_event({"prompt": "a cat"}), lambda_context)
    execution_id = accepted["execution_id"]

    status, mine = call(api, get_event(execution_id), lambda_context)
    other_status, other = call(api, get_event(execution_id, api_key_id="key-b"), lambda_context)
    unknown_status, _ = call(api, get_event("does-not-exist"), lambda_context)
    bad_status, _ = call(api, get_event("not a valid/name"), lambda_context)

    assert status == 200
    assert mine["execution_id"] == execution_id
    assert mine["status"] in {"RUNNING", "SUCCEEDED"}
    assert other_status == 404 and other["error"]["code"] == "NOT_FOUND"
    assert unknown_status == 404
    assert bad_status == 404


def test_delete_of_another_callers_job_is_404(api: Any, lambda_context: Any) -> None:
    _, accepted = call(api, post_event({"prompt": "a cat"}), lambda_context)
    status, _ = call(api, get_event(accepted["execution_id"], "key-b", "DELETE"), lambda_context)
    assert status == 404


def test_openapi_document_is_served_and_saved_in_the_repo(api: Any, lambda_context: Any) -> None:
    event = copy.deepcopy(load_event("api_get_openapi.json"))
    status, served = call(api, event, lambda_context)
    saved = json.loads((REPO_ROOT / "docs" / "openapi.json").read_text())

    assert status == 200
    assert served == json.loads(api.openapi_document())
    assert saved == served, "docs/openapi.json is stale: run `python scripts/export_openapi.py`"
    assert set(served["paths"]) == {"/generate", "/generate/{execution_id}"}
    assert "GenerateRequest" in served["components"]["schemas"]
