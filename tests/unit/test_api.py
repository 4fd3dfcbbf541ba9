"""ApiFunction against moto: submit, idempotency, ownership, body rules, errors, cancel, OpenAPI.

Every response any test here gets goes through :func:`call`, which checks it against the API's
contract: its status is declared for its route in the OpenAPI document, and an error's body is an
``ErrorResponse``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from typing import Any

import boto3
import pytest
from moto import mock_aws

from imagegen_common.models import ErrorResponse
from tests.conftest import REPO_ROOT, import_function, load_event
from tests.jobs_table import create_jobs_table

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
        monkeypatch.setenv("STATE_MACHINE_ARN", machine["stateMachineArn"])
        monkeypatch.setenv("IMAGES_BUCKET", "images")
        monkeypatch.setenv("JOBS_TABLE_NAME", create_jobs_table())
        yield import_function("api")


@cache
def saved_openapi_document() -> dict[str, Any]:
    return json.loads((REPO_ROOT / "docs" / "openapi.json").read_text())


def check_contract(event: dict[str, Any], response: dict[str, Any]) -> None:
    """The response's status is declared for its route; an error body is an ErrorResponse."""
    status = int(response["statusCode"])
    body = json.loads(response["body"])
    operation = (
        saved_openapi_document()["paths"]
        .get(event.get("resource", ""), {})
        .get(event["httpMethod"].lower())
    )
    if operation is not None:
        assert str(status) in operation["responses"], (
            f"{event['httpMethod']} {event['resource']} answered {status}, not in the document"
        )
    if status >= 400:
        ErrorResponse.model_validate(body)
        assert set(body) == {"error"}
        assert response["multiValueHeaders"]["Content-Type"] == ["application/json"]


def respond(api: Any, event: dict[str, Any], lambda_context: Any) -> dict[str, Any]:
    response: dict[str, Any] = api.lambda_handler(event, lambda_context)
    check_contract(event, response)
    return response


def call(api: Any, event: dict[str, Any], lambda_context: Any) -> tuple[int, dict[str, Any]]:
    response = respond(api, event, lambda_context)
    return int(response["statusCode"]), json.loads(response["body"])


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
    assert answer["error"]["code"] == "VALIDATION_ERROR"  # INVALID_PROMPT is a job's failure
    assert answer["error"]["fields"][0]["field"] == "width"
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
    # Every route of the template but the documents themselves (Swagger UI, this document).
    from samtranslator.yaml_helper import yaml_parse

    events = yaml_parse((REPO_ROOT / "template.yaml").read_text())["Resources"]["ApiFunction"][
        "Properties"
    ]["Events"]
    routes = {event["Properties"]["Path"] for event in events.values()}
    assert set(served["paths"]) == routes - {"/docs", "/openapi.json"}
    assert "GenerateRequest" in served["components"]["schemas"]


# --- Body rules -------------------------------------------------------------------------------


def only_field(answer: dict[str, Any]) -> dict[str, str]:
    [field] = answer["error"]["fields"]
    return field


@pytest.mark.parametrize(
    ("body", "status", "rule"),
    [
        ("{not json", 400, "json_invalid"),
        ('{"prompt": "a fox",}', 400, "json_invalid"),
        ('{"prompt": NaN}', 400, "json_invalid"),
        ("[" * 10_000 + "]" * 10_000, 400, "json_depth"),
        ('{"a":' * 10_000 + "1" + "}" * 10_000, 400, "json_depth"),
        ('{"prompt": "a fox", "seed": ' + "9" * 5_000 + "}", 400, "json_number"),
        ('{"prompt": "a fox", "seed": 1e999}', 400, "json_number"),
        ('[{"prompt": "a fox"}, {"prompt": "dropped"}]', 422, "object_type"),
        ('"a fox"', 422, "object_type"),
        ("42", 422, "object_type"),
        ("null", 422, "object_type"),
        ("", 422, "missing"),
    ],
)
def test_body_that_is_not_a_json_object_is_refused_naming_the_rule(
    api: Any, lambda_context: Any, body: str, status: int, rule: str
) -> None:
    answer_status, answer = call(api, post_event(body), lambda_context)

    assert answer_status == status
    assert answer["error"]["code"] == "VALIDATION_ERROR"
    assert only_field(answer) | {"message": ""} == {
        "field": "body",
        "in": "body",
        "rule": rule,
        "message": "",
    }
    assert (
        boto3.client("stepfunctions").list_executions(
            stateMachineArn=api.settings.state_machine_arn
        )["executions"]
        == []
    )


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ],
)
def test_json_body_is_read_without_or_with_a_json_content_type(
    api: Any, lambda_context: Any, content_type: str | None
) -> None:
    event = post_event({"prompt": "a fox"})
    del event["headers"]["Content-Type"]
    if content_type is not None:
        event["headers"]["content-type"] = content_type

    status, answer = call(api, event, lambda_context)

    assert status == 202, answer


def test_base64_encoded_json_body_is_read(api: Any, lambda_context: Any) -> None:
    import base64

    event = post_event("")
    event["body"] = base64.b64encode(b'{"prompt": "a fox"}').decode()
    event["isBase64Encoded"] = True

    assert call(api, event, lambda_context)[0] == 202


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", '{"prompt": "a fox"}'),
        ("application/x-www-form-urlencoded", "prompt=a+fox"),
        ("multipart/form-data", "prompt=a+fox"),  # no boundary: powertools raised ValueError
        ("multipart/form-data; boundary=x", '--x\r\nContent-Disposition: form-data; name="prompt"'),
        ("application/jsonp", '{"prompt": "a fox"}'),
    ],
)
def test_body_of_another_media_type_gets_415_naming_what_is_accepted(
    api: Any, lambda_context: Any, content_type: str, body: str
) -> None:
    status, answer = call(
        api, post_event(body, headers={"Content-Type": content_type}), lambda_context
    )

    assert status == 415
    assert answer["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    field = only_field(answer)
    assert (field["field"], field["in"], field["rule"]) == ("Content-Type", "header", "media_type")
    assert "application/json" in field["message"]


def no_execution_started(api: Any) -> bool:
    return (
        boto3.client("stepfunctions").list_executions(
            stateMachineArn=api.settings.state_machine_arn
        )["executions"]
        == []
    )


def test_a_key_given_twice_gets_400_json_duplicate_key(api: Any, lambda_context: Any) -> None:
    # A proxy, a WAF or a log that reads the first value would see another request.
    status, answer = call(api, post_event('{"prompt": "a", "prompt": "b"}'), lambda_context)

    assert status == 400
    field = only_field(answer)
    assert (field["field"], field["in"], field["rule"]) == ("body", "body", "json_duplicate_key")
    assert "'prompt'" in field["message"]
    assert no_execution_started(api)


def test_a_body_padded_past_the_limit_gets_413_and_starts_nothing(
    api: Any, lambda_context: Any
) -> None:
    padded = '{"prompt": "a fox"' + " " * (9 * 1024 * 1024) + "}"

    status, answer = call(api, post_event(padded), lambda_context)

    assert status == 413
    assert answer["error"]["code"] == "PAYLOAD_TOO_LARGE"
    field = only_field(answer)
    assert (field["field"], field["rule"]) == ("body", "max_bytes")
    assert str(64 * 1024) in field["message"]
    assert no_execution_started(api)


def test_a_body_just_under_the_limit_is_read(api: Any, lambda_context: Any) -> None:
    body = '{"prompt": "a fox"}'
    body = body[:-1] + " " * (64 * 1024 - len(body)) + "}"

    assert call(api, post_event(body), lambda_context)[0] == 202


@pytest.mark.parametrize(
    ("field_name", "text", "rule"),
    [
        ("prompt", "\u200b\u200b\u2060", "format_character"),
        ("prompt", "\u3164\u3164 \u0301", "no_visible_characters"),
        ("prompt", "a fox\x00", "control_character"),
        ("prompt", "a \x1b[31mred\x1b[0m fox", "control_character"),
        ("prompt", "a\x85fox", "control_character"),  # C1 NEXT LINE (trimmed at the ends)
        ("prompt", "a fox \u202egpj.exe", "bidi_control"),
        ("prompt", "a fox \u2066isolated\u2069", "bidi_control"),
        ("prompt", "a fox \ue000", "private_use_character"),
        ("negative_prompt", "blurry\x07", "control_character"),
        ("negative_prompt", "blurry \u202d", "bidi_control"),
        ("negative_prompt", "\u200b", "format_character"),
    ],
)
def test_a_prompt_that_is_not_readable_text_gets_422_naming_the_field_and_rule(
    api: Any, lambda_context: Any, field_name: str, text: str, rule: str
) -> None:
    body = {"prompt": "a fox", field_name: text}

    status, answer = call(api, post_event(body), lambda_context)

    assert status == 422, answer
    field = only_field(answer)
    assert (field["field"], field["in"], field["rule"]) == (field_name, "body", rule)
    assert no_execution_started(api)


@pytest.mark.parametrize(
    "prompt",
    [
        "a fox\nin the snow,\tat dawn",
        "👩\u200d👩\u200d👧 a family",  # ZWJ sequence
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f a flag",  # emoji tags
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with a ZWNJ
        "un renard, café crème",
    ],
)
def test_text_people_write_is_accepted(api: Any, lambda_context: Any, prompt: str) -> None:
    assert call(api, post_event({"prompt": prompt}), lambda_context)[0] == 202


def test_overlong_idempotency_key_gets_422_naming_the_header(api: Any, lambda_context: Any) -> None:
    event = post_event({"prompt": "a fox"}, headers={"Idempotency-Key": "k" * 256})

    status, answer = call(api, event, lambda_context)

    assert status == 422
    field = only_field(answer)
    assert (field["field"], field["in"], field["rule"]) == (
        "idempotency-key",
        "header",
        "string_too_long",
    )


# --- Errors from every layer, in one shape -------------------------------------------------


def test_unknown_route_gets_404_in_the_error_shape(api: Any, lambda_context: Any) -> None:
    event = post_event({"prompt": "a fox"})
    event["path"] = event["resource"] = "/nothing/here"

    status, answer = call(api, event, lambda_context)

    assert status == 404
    assert answer["error"]["code"] == "NOT_FOUND"


def test_unexpected_exception_gets_500_in_the_error_shape(
    api: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(api, "job_status", broken)

    status, answer = call(api, get_event("some-job"), lambda_context)

    assert status == 500
    assert answer["error"]["code"] == "INTERNAL_ERROR"
    assert "secret detail" not in answer["error"]["message"]
    assert lambda_context.aws_request_id in answer["error"]["message"]


def test_event_that_cannot_be_routed_gets_500_not_a_lambda_error(
    api: Any, lambda_context: Any
) -> None:
    event = post_event({"prompt": "a fox"})
    del event["httpMethod"]

    response = api.lambda_handler(event, lambda_context)

    assert response["statusCode"] == 500
    ErrorResponse.model_validate_json(response["body"])


def client_error(code: str, http_status: int, operation: str) -> Any:
    from botocore.exceptions import ClientError

    return ClientError(
        {
            "Error": {"Code": code, "Message": "..."},
            "ResponseMetadata": {"HTTPStatusCode": http_status},
        },
        operation,
    )


@pytest.mark.parametrize(
    ("code", "http_status"), [("ThrottlingException", 400), ("ServiceUnavailable", 503)]
)
def test_step_functions_throttling_or_failing_gets_503_with_retry_after(
    api: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, code: str, http_status: int
) -> None:
    def throttled(**kwargs: Any) -> Any:
        raise client_error(code, http_status, "StartExecution")

    monkeypatch.setattr(api.sfn(), "start_execution", throttled)

    response = respond(api, post_event({"prompt": "a fox"}), lambda_context)

    assert response["statusCode"] == 503
    assert json.loads(response["body"])["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert int(response["multiValueHeaders"]["Retry-After"][0]) > 0


def test_aws_error_that_is_our_fault_gets_500(
    api: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(**kwargs: Any) -> Any:
        raise client_error("AccessDeniedException", 400, "StartExecution")

    monkeypatch.setattr(api.sfn(), "start_execution", denied)

    status, answer = call(api, post_event({"prompt": "a fox"}), lambda_context)

    assert status == 500
    assert answer["error"]["code"] == "INTERNAL_ERROR"


# --- DELETE -----------------------------------------------------------------------------------


@pytest.fixture
def delivered_events(api: Any) -> Any:
    """Every event put on any bus of the account, delivered to one queue; yields a reader."""
    events = boto3.client("events")
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName="every-event")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    events.create_event_bus(Name="imagegen-bus")
    for bus in ("default", "imagegen-bus"):
        events.put_rule(
            Name=f"all-on-{bus}", EventBusName=bus, EventPattern='{"source": [{"prefix": ""}]}'
        )
        events.put_targets(
            Rule=f"all-on-{bus}", EventBusName=bus, Targets=[{"Id": "q", "Arn": queue_arn}]
        )

    def read() -> list[dict[str, Any]]:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
        return [json.loads(message["Body"]) for message in messages.get("Messages", [])]

    return read


def test_delete_of_a_running_job_stops_it_and_emits_no_event(
    api: Any, lambda_context: Any, delivered_events: Any
) -> None:
    _, accepted = call(api, post_event({"prompt": "a cat"}), lambda_context)
    execution_id = accepted["execution_id"]

    status, answer = call(api, get_event(execution_id, method="DELETE"), lambda_context)

    assert status == 202
    assert answer == {"execution_id": execution_id, "status": "ABORTED"}
    assert delivered_events() == []  # the cancelled event is the workflow's to emit, once
    # The plumbing works: an event put on the bus does arrive.
    boto3.client("events").put_events(
        Entries=[{"EventBusName": "imagegen-bus", "Source": "t", "DetailType": "t", "Detail": "{}"}]
    )
    assert [event["source"] for event in delivered_events()] == ["t"]


def test_delete_answers_cancelling_while_the_stop_is_not_applied_yet(
    api: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, accepted = call(api, post_event({"prompt": "a cat"}), lambda_context)
    stops: list[dict[str, Any]] = []
    # As moto during a task, and AWS in the instant after the call: it still reads RUNNING.
    monkeypatch.setattr(api.sfn(), "stop_execution", lambda **kwargs: stops.append(kwargs))

    status, answer = call(api, get_event(accepted["execution_id"], method="DELETE"), lambda_context)

    assert status == 202
    assert answer["status"] == "CANCELLING"
    assert [stop["executionArn"].rsplit(":", 1)[-1] for stop in stops] == [accepted["execution_id"]]


def test_delete_of_an_ended_job_is_409_naming_its_status(api: Any, lambda_context: Any) -> None:
    _, accepted = call(api, post_event({"prompt": "a cat"}), lambda_context)
    call(api, get_event(accepted["execution_id"], method="DELETE"), lambda_context)

    status, answer = call(api, get_event(accepted["execution_id"], method="DELETE"), lambda_context)

    assert status == 409
    assert answer["error"]["code"] == "CONFLICT"
    assert "ABORTED" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("code", "http_status", "expected"),
    [("ExecutionDoesNotExist", 400, 404), ("ThrottlingException", 400, 503)],
)
def test_stop_execution_errors_are_answered_in_the_error_shape(
    api: Any,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    http_status: int,
    expected: int,
) -> None:
    _, accepted = call(api, post_event({"prompt": "a cat"}), lambda_context)

    def failing(**kwargs: Any) -> Any:
        raise client_error(code, http_status, "StopExecution")

    monkeypatch.setattr(api.sfn(), "stop_execution", failing)

    status, answer = call(api, get_event(accepted["execution_id"], method="DELETE"), lambda_context)

    assert status == expected
    assert answer["error"]["code"] == {404: "NOT_FOUND", 503: "SERVICE_UNAVAILABLE"}[expected]


# --- GPU backpressure -----------------------------------------------------------------------


@pytest.fixture
def gpu_queue(api: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """The API with GPU_MAX_BACKLOG=2 on an empty GPU queue; yields (api, queue_url)."""
    queue_url = boto3.client("sqs").create_queue(QueueName="gpu-jobs")["QueueUrl"]
    monkeypatch.setenv("GPU_QUEUE_URL", queue_url)
    monkeypatch.setenv("GPU_MAX_BACKLOG", "2")
    monkeypatch.setenv("GPU_BACKLOG_RETRY_AFTER_SECONDS", "45")
    return import_function("api"), queue_url


def put_jobs(queue_url: str, count: int) -> None:
    for index in range(count):
        boto3.client("sqs").send_message(QueueUrl=queue_url, MessageBody=f"job {index}")


def test_gpu_job_is_accepted_while_the_backlog_is_below_the_limit(
    gpu_queue: tuple[Any, str], lambda_context: Any
) -> None:
    api, queue_url = gpu_queue
    put_jobs(queue_url, 1)

    status, _ = call(api, post_event({"prompt": "a fox", "backend": "gpu"}), lambda_context)

    assert status == 202


def test_gpu_job_gets_429_with_retry_after_when_the_backlog_is_full(
    gpu_queue: tuple[Any, str], lambda_context: Any
) -> None:
    api, queue_url = gpu_queue
    put_jobs(queue_url, 2)

    response = respond(api, post_event({"prompt": "a fox", "backend": "gpu"}), lambda_context)
    bedrock_status, _ = call(api, post_event({"prompt": "a fox"}), lambda_context)

    assert response["statusCode"] == 429
    answer = json.loads(response["body"])
    assert answer["error"]["code"] == "TOO_MANY_REQUESTS"
    assert "GPU backlog is full" in answer["error"]["message"]
    assert response["multiValueHeaders"]["Retry-After"] == ["45"]
    assert bedrock_status == 202  # only the GPU backend is held back
    executions = boto3.client("stepfunctions").list_executions(
        stateMachineArn=api.settings.state_machine_arn
    )["executions"]
    assert len(executions) == 1


def test_without_a_limit_the_gpu_queue_is_not_read(
    api: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPU_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/none")
    monkeypatch.setenv("GPU_MAX_BACKLOG", "0")  # no limit
    fresh = import_function("api")

    status, _ = call(fresh, post_event({"prompt": "a fox", "backend": "gpu"}), lambda_context)

    assert status == 202
    assert fresh.sqs.cache_info().currsize == 0


# --- The contract, all statuses at once ------------------------------------------------------


def test_every_error_status_is_declared_and_in_the_error_shape(
    api: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kind of refusal once; ``call`` checks each answer against the document."""
    seen: set[int] = set()
    for event in (
        post_event("{not json"),
        post_event({"prompt": "a fox"}, headers={"Content-Type": "text/plain"}),
        post_event({"prompt": ""}),
        get_event("no-such-job"),
        get_event("no-such-job", method="DELETE"),
    ):
        seen.add(call(api, event, lambda_context)[0])
    headers = {"Idempotency-Key": "k"}
    call(api, post_event({"prompt": "a"}, headers=headers), lambda_context)
    seen.add(call(api, post_event({"prompt": "b"}, headers=headers), lambda_context)[0])

    def throttled(**kwargs: Any) -> Any:
        raise client_error("ThrottlingException", 400, "DescribeExecution")

    monkeypatch.setattr(api.sfn(), "describe_execution", throttled)
    seen.add(call(api, get_event("some-job"), lambda_context)[0])
    monkeypatch.setattr(api.sfn(), "describe_execution", None)  # calling None: a bug, 500
    seen.add(call(api, get_event("some-job", method="DELETE"), lambda_context)[0])

    assert seen == {400, 404, 409, 415, 422, 500, 503}


def test_openapi_document_declares_every_error_as_error_response() -> None:
    document = saved_openapi_document()
    expected = {
        ("post", "/generate"): {"200", "202", "400", "409", "415", "422", "429", "500", "503"},
        ("get", "/generate/{execution_id}"): {"200", "404", "429", "500", "503"},
        ("delete", "/generate/{execution_id}"): {"202", "404", "409", "429", "500", "503"},
    }
    gateway = {"403", "413", "429", "504"}  # API Gateway's own answers, in the same shape

    assert "HTTPValidationError" not in json.dumps(document)
    for (method, path), statuses in expected.items():
        responses = document["paths"][path][method]["responses"]
        assert set(responses) == statuses | gateway
        for status, response in responses.items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
            if status in {"429", "503"}:
                assert "Retry-After" in response["headers"]
    cancelling = document["components"]["schemas"]["JobCancellation"]["properties"]["status"]
    assert {"type": "string", "const": "CANCELLING"} in cancelling["anyOf"]


# --- GET /models ----------------------------------------------------------------------------


def models_event() -> dict[str, Any]:
    event = get_event("x")
    event.update(resource="/models", path="/models", pathParameters=None)
    event["requestContext"]["resourcePath"] = "/models"
    return event


def test_models_describe_the_deployment_from_its_settings(
    api: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "ALLOWED_MODEL_IDS", "stability.stable-image-core-v1:1,stability.sd3-5-large-v1:0"
    )
    monkeypatch.setenv("DEFAULT_MODEL_ID", "stability.sd3-5-large-v1:0")
    monkeypatch.setenv("ALLOWED_SIZES", "1024x1024,1344x768,1000x200")
    monkeypatch.setenv("DEFAULT_BACKEND", "gpu")
    monkeypatch.setenv("GPU_DEFAULT_SIZE", "1000x200")
    monkeypatch.setenv("GPU_MODEL_ID", "stabilityai/sd-turbo")
    fresh = import_function("api")

    status, catalogue = call(fresh, models_event(), lambda_context)

    assert status == 200, catalogue
    bedrock, gpu = catalogue["backends"]
    assert (bedrock["backend"], bedrock["default"], gpu["backend"], gpu["default"]) == (
        "bedrock",
        False,
        "gpu",
        True,
    )
    assert [(m["model_id"], m["default"]) for m in bedrock["models"]] == [
        ("stability.stable-image-core-v1:1", False),
        ("stability.sd3-5-large-v1:0", True),
    ]
    assert bedrock["models"][0]["name"] == "Stable Image Core 1.1"
    # 1000x200 (5:1) has no aspect ratio of Stability's: the Bedrock models do not take it.
    assert bedrock["sizes"] == ["1024x1024", "1344x768"]
    assert gpu["sizes"] == ["1024x1024", "1344x768", "1000x200"]
    assert gpu["default_size"] == "1000x200"
    [gpu_model] = gpu["models"]
    assert {key: gpu_model[key] for key in ("model_id", "name", "default")} == {
        "model_id": "stabilityai/sd-turbo",
        "name": "stabilityai/sd-turbo",
        "default": True,
    }
    # The controls each model takes, with the GPU's limits from the deployment's settings.
    assert gpu_model["takes"] == ["guidance_scale", "output_quality", "scheduler", "steps"]
    assert (gpu_model["default_steps"], gpu_model["max_steps"]) == (1, 50)
    assert gpu_model["output_formats"] == ["png", "jpeg", "webp"]
    assert bedrock["models"][0]["takes"] == ["aspect_ratio"]
    assert bedrock["models"][0]["output_formats"] == ["png", "jpeg"]


def test_the_document_gives_each_stage_its_words(api: Any) -> None:
    from imagegen_common.models import STAGE_LABELS, Stage

    stage = json.loads(api.openapi_document())["components"]["schemas"]["Stage"]
    assert stage["enum"] == [member.value for member in Stage]
    assert stage["x-enum-descriptions"] == [STAGE_LABELS[member] for member in Stage]
