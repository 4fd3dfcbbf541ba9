"""ApiFunction and the jobs table: the record made at POST, what GET merges from it while a job
runs, the caller's job list (pages, filter, bad tokens, owner scoping), the webhook URL's guard."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from imagegen_common.job_records import apply_ending, apply_progress, jobs_table, read_job
from imagegen_common.models import (
    ErrorCode,
    ErrorInfo,
    ExecutionStatus,
    ImageGenerationProgressDetail,
    ImageOutcome,
    Progress,
    Stage,
)
from tests.conftest import load_event
from tests.unit import test_api as api_suite
from tests.unit.test_api import call, client_error, get_event, post_event

api = api_suite.api  # the suite's fixture: ApiFunction under moto, with the jobs table
OWNER = "apikey:key-a"


def list_event(api_key_id: str = "key-a", **query: str) -> dict[str, Any]:
    event = copy.deepcopy(load_event("api_get_generate.json"))
    event.update(
        resource="/generate",
        path="/generate",
        pathParameters=None,
        queryStringParameters=query or None,
        multiValueQueryStringParameters={k: [v] for k, v in query.items()} or None,
    )
    event["requestContext"]["identity"]["apiKeyId"] = api_key_id
    event["requestContext"]["resourcePath"] = "/generate"
    return event


def table_of(api: Any) -> Any:
    return jobs_table(api.settings.jobs_table_name, client=boto3.client("dynamodb"))


def submit(api: Any, lambda_context: Any, body: dict[str, Any], key: str = "key-a") -> str:
    status, accepted = call(api, post_event(body, api_key_id=key), lambda_context)
    assert status == 202, accepted
    return str(accepted["execution_id"])


def test_post_records_the_job_before_it_starts(api: Any, lambda_context: Any) -> None:
    execution_id = submit(api, lambda_context, {"prompt": " a fox ", "num_images": 3})

    record = read_job(table_of(api), execution_id, OWNER)
    assert record is not None
    assert (record.status, record.stage, record.backend) == (
        ExecutionStatus.RUNNING,
        Stage.QUEUED,
        "bedrock",
    )
    assert (record.prompt, record.num_images) == ("a fox", 3)
    assert record.model_id == api.settings.default_model_id


def test_a_job_that_could_not_start_leaves_no_record(
    api: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def throttled(**kwargs: Any) -> Any:
        raise client_error("ThrottlingException", 400, "StartExecution")

    monkeypatch.setattr(api.sfn(), "start_execution", throttled)
    status, _ = call(api, post_event({"prompt": "a fox"}), lambda_context)

    assert status == 503
    assert boto3.client("dynamodb").scan(TableName=api.settings.jobs_table_name)["Count"] == 0
    code, page = call(api, list_event(), lambda_context)
    assert code == 200 and page["jobs"] == []


def test_an_idempotent_retry_keeps_the_first_record(api: Any, lambda_context: Any) -> None:
    headers = {"Idempotency-Key": "order-7"}
    first = call(api, post_event({"prompt": "a fox"}, headers=headers), lambda_context)[1]
    moved = ImageGenerationProgressDetail(
        execution_id=first["execution_id"],
        owner=OWNER,
        stage=Stage.SIGNING,
        at=datetime.now(UTC) + timedelta(seconds=1),
    )
    apply_progress(table_of(api), moved)
    second = call(api, post_event({"prompt": "a fox"}, headers=headers), lambda_context)[1]

    assert second["execution_id"] == first["execution_id"]
    record = read_job(table_of(api), first["execution_id"], OWNER)
    assert record is not None and record.stage is Stage.SIGNING


def test_get_merges_stage_progress_and_images_so_far_while_running(
    api: Any, lambda_context: Any
) -> None:
    execution_id = submit(api, lambda_context, {"prompt": "two boats", "num_images": 2})
    table = table_of(api)
    bucket = api.settings.images_bucket
    boto3.client("s3").put_object(Bucket=bucket, Key=f"images/{execution_id}/1.png", Body=b"png")
    started = datetime.now(UTC) + timedelta(seconds=1)

    def event(at: datetime, **fields: Any) -> ImageGenerationProgressDetail:
        return ImageGenerationProgressDetail(
            execution_id=execution_id, owner=OWNER, stage=Stage.GENERATING, at=at, **fields
        )

    apply_progress(
        table, event(started, progress=Progress(step=0, steps=2, percent=0, unit="images"))
    )
    made = ImageOutcome(
        index=1, seed=8, bucket=bucket, s3_key=f"images/{execution_id}/1.png", width=64, height=64
    )
    refused = ImageOutcome(
        index=0, seed=7, error=ErrorInfo(code=ErrorCode.CONTENT_FILTERED, message="filtered")
    )
    apply_progress(table, event(started + timedelta(seconds=2), image=made))
    apply_progress(table, event(started + timedelta(seconds=1), image=refused))  # out of order

    status, job = call(api, get_event(execution_id), lambda_context)

    assert status == 200
    assert (job["status"], job["stage"], job["backend"]) == ("RUNNING", "generating", "bedrock")
    assert job["progress"]["step"] == 2 and job["progress"]["percent"] == 100.0
    [image] = job["images"]
    assert image["seed"] == 8 and "X-Amz-Signature" in image["url"]
    [failed] = job["failed_images"]
    assert failed["error"]["code"] == "CONTENT_FILTERED"
    assert job["started_at"] is not None and job["submitted_at"] is not None
    assert job["updated_at"] > job["started_at"]
    assert job["queue_position"] is None and job["cost"] is None


def test_get_reports_the_gpu_queue_position(api: Any, lambda_context: Any) -> None:
    ids = [submit(api, lambda_context, {"prompt": f"job {n}", "backend": "gpu"}) for n in range(3)]
    table = table_of(api)
    queued_at = datetime.now(UTC) + timedelta(seconds=1)
    for n, execution_id in enumerate(ids):
        apply_progress(
            table,
            ImageGenerationProgressDetail(
                execution_id=execution_id,
                owner=OWNER,
                stage=Stage.QUEUED,
                backend="gpu",
                at=queued_at + timedelta(milliseconds=n),
            ),
        )

    positions = [call(api, get_event(i), lambda_context)[1]["queue_position"] for i in ids]
    assert positions == [0, 1, 2]
    apply_ending(table, ids[0], ExecutionStatus.ABORTED)
    assert call(api, get_event(ids[2]), lambda_context)[1]["queue_position"] == 1


def test_the_list_is_the_callers_own_newest_first_in_pages(api: Any, lambda_context: Any) -> None:
    mine = [submit(api, lambda_context, {"prompt": f"mine {n}"}) for n in range(5)]
    theirs = submit(api, lambda_context, {"prompt": "theirs"}, key="key-b")
    apply_ending(table_of(api), mine[1], ExecutionStatus.SUCCEEDED)

    seen: list[str] = []
    query: dict[str, str] = {"limit": "2"}
    for _ in range(5):
        status, page = call(api, list_event(**query), lambda_context)
        assert status == 200 and len(page["jobs"]) <= 2
        seen += [job["execution_id"] for job in page["jobs"]]
        if page["next_token"] is None:
            break
        query["next_token"] = page["next_token"]
    assert seen == list(reversed(mine))
    assert theirs not in seen

    _, succeeded = call(api, list_event(status="SUCCEEDED"), lambda_context)
    assert [job["execution_id"] for job in succeeded["jobs"]] == [mine[1]]
    assert succeeded["jobs"][0]["stage"] == "succeeded"
    _, first = call(api, list_event(), lambda_context)
    assert first["jobs"][0]["prompt"] == "mine 4" and first["next_token"] is None
    _, other = call(api, list_event(api_key_id="key-b"), lambda_context)
    assert [job["execution_id"] for job in other["jobs"]] == [theirs]
    # Another caller's job is not theirs to read either.
    assert call(api, get_event(mine[0], api_key_id="key-b"), lambda_context)[0] == 404


@pytest.mark.parametrize(
    ("query", "field", "rule"),
    [
        ({"limit": "0"}, "limit", "greater_than_equal"),
        ({"limit": "101"}, "limit", "less_than_equal"),
        ({"limit": "many"}, "limit", "int_parsing"),
        ({"status": "DONE"}, "status", "enum"),
        ({"next_token": "not a token"}, "next_token", "invalid_token"),
    ],
)
def test_a_bad_query_gets_422_naming_the_parameter(
    api: Any, lambda_context: Any, query: dict[str, str], field: str, rule: str
) -> None:
    status, body = call(api, list_event(**query), lambda_context)

    assert status == 422
    assert body["error"]["code"] == "VALIDATION_ERROR"
    [problem] = body["error"]["fields"]
    assert (problem["field"], problem["in"], problem["rule"]) == (field, "query", rule)


def test_another_callers_next_token_is_refused(api: Any, lambda_context: Any) -> None:
    for n in range(3):
        submit(api, lambda_context, {"prompt": f"theirs {n}"}, key="key-b")
    _, page = call(api, list_event(api_key_id="key-b", limit="1"), lambda_context)
    assert page["next_token"]

    status, body = call(api, list_event(next_token=page["next_token"]), lambda_context)
    assert status == 422
    assert body["error"]["fields"][0]["field"] == "next_token"


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("https://10.1.2.3/hook", "private_address"),
        ("https://169.254.169.254/latest", "metadata_address"),
        ("http://127.0.0.1:8080/hook", "loopback_address"),
    ],
)
def test_a_webhook_to_a_private_address_gets_422_naming_webhook_url(
    api: Any, lambda_context: Any, url: str, rule: str
) -> None:
    body = {"prompt": "a fox", "webhook": {"url": url}}
    status, answer = call(api, post_event(body), lambda_context)

    assert status == 422
    [problem] = answer["error"]["fields"]
    assert (problem["field"], problem["in"]) == ("webhook.url", "body")
    assert problem["rule"] in {rule, "https_required"}
    assert boto3.client("dynamodb").scan(TableName=api.settings.jobs_table_name)["Count"] == 0


def test_a_webhook_on_loopback_is_accepted_where_the_local_stack_allows_it(
    api: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.settings, "webhook_allow_loopback", True)
    body = {"prompt": "a fox", "webhook": {"url": "http://127.0.0.1:8080/hook"}}
    execution_id = submit(api, lambda_context, body)

    record = read_job(table_of(api), execution_id, OWNER)
    assert record is not None and record.webhook is not None
    assert str(record.webhook.url) == "http://127.0.0.1:8080/hook"
    assert json.loads(record.webhook.model_dump_json())["events"] == ["completed"]
