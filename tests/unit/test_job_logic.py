"""The plain modules behind the workflow's functions, called without a Lambda event."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.credentials import CredentialProvider, RefreshableCredentials

from imagegen_common.errors import (
    ContentFilteredError,
    InvalidPromptError,
    ModelError,
    describe_task_error,
    error_for_code,
)
from imagegen_common.failures import describe_failure
from imagegen_common.jobs import parse_job, plan_job, resolve_request
from imagegen_common.models import (
    MAX_SEED,
    Backend,
    ErrorCode,
    ErrorInfo,
    GenerateRequest,
    ImageOutcome,
    Job,
    TaskError,
)
from imagegen_common.presign import presign_get, sign_generated_images
from imagegen_common.settings import GenerationSettings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def settings(**overrides: Any) -> GenerationSettings:
    return GenerationSettings(images_bucket="images", **overrides)


def job(**request: Any) -> Job:
    return Job(
        job_id="job-1",
        owner="apikey:a",
        submitted_at=NOW,
        request=GenerateRequest(**{"prompt": "a fox", **request}),
    )


def test_plan_fills_defaults_seeds_and_keys() -> None:
    planned = plan_job(job(num_images=3, seed=MAX_SEED - 1), settings())

    assert planned.backend is Backend.BEDROCK
    assert planned.model_id == "stability.stable-image-core-v1:1"
    assert (planned.width, planned.height) == (1024, 1024)
    assert [slot.seed for slot in planned.images] == [MAX_SEED - 1, MAX_SEED, 0]  # wraps
    assert [slot.s3_key for slot in planned.images] == [f"images/job-1/{i}.png" for i in range(3)]
    assert planned.bucket == "images"


def test_gpu_jobs_get_the_gpu_default_size_and_no_model() -> None:
    planned = plan_job(job(backend="gpu"), settings(gpu_default_size="512x512"))
    assert (planned.backend, planned.model_id, planned.width) == (Backend.GPU, None, 512)


def test_random_seeds_differ_between_jobs() -> None:
    seeds = {plan_job(job(), settings()).images[0].seed for _ in range(5)}
    assert len(seeds) > 1


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"model_id": "acme.painter-v1"}, "model_id"),
        ({"backend": "gpu", "model_id": "stability.stable-image-core-v1:1"}, "model_id"),
        ({"width": 640, "height": 640}, "width"),
    ],
)
def test_requests_outside_the_deployments_rules_name_the_field(
    request_fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidPromptError) as raised:
        resolve_request(job(**request_fields).request, settings())
    assert raised.value.field == field


def test_blocked_terms_are_matched_case_insensitively() -> None:
    with pytest.raises(InvalidPromptError, match="blocked term"):
        plan_job(job(prompt="A FORBIDDEN thing"), settings(blocked_prompt_terms=["forbidden"]))


def test_a_malformed_job_is_an_invalid_prompt_naming_the_fields() -> None:
    with pytest.raises(InvalidPromptError, match=r"request\.prompt"):
        parse_job({"job_id": "x", "owner": "o", "submitted_at": NOW.isoformat(), "request": {}})


def test_settings_split_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGES_BUCKET", "b")
    monkeypatch.setenv("ALLOWED_SIZES", "512x512, 1024x1024")
    monkeypatch.setenv("BLOCKED_PROMPT_TERMS", "")
    loaded = GenerationSettings()
    assert loaded.allowed_sizes == ["512x512", "1024x1024"]
    assert loaded.blocked_prompt_terms == []


def test_settings_fail_naming_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGES_BUCKET", raising=False)
    with pytest.raises(ValueError, match="images_bucket"):
        GenerationSettings()


@pytest.mark.parametrize(
    ("error", "cause", "code", "message"),
    [
        (
            "ContentFilteredError",
            json.dumps({"errorMessage": "filtered", "errorType": "ContentFilteredError"}),
            ErrorCode.CONTENT_FILTERED,
            "filtered",
        ),
        ("INVALID_JOB", "width must be a multiple of 8", ErrorCode.INVALID_JOB, "width must"),
        ("States.HeartbeatTimeout", None, ErrorCode.TIMEOUT, "did not report in time"),
        ("States.Runtime", "boom", ErrorCode.INTERNAL_ERROR, "States.Runtime: boom"),
    ],
)
def test_task_errors_become_codes_and_messages(
    error: str, cause: str | None, code: ErrorCode, message: str
) -> None:
    info = describe_task_error(TaskError(Error=error, Cause=cause))
    assert info.code is code
    assert message in info.message


def test_error_for_code_gives_the_permanent_class() -> None:
    assert isinstance(
        error_for_code(ErrorInfo(code=ErrorCode.MODEL_ERROR, message="m")), ModelError
    )
    filtered = error_for_code(ErrorInfo(code=ErrorCode.CONTENT_FILTERED, message="m"))
    assert isinstance(filtered, ContentFilteredError)


def test_failure_of_an_unplanned_job_still_names_the_owner() -> None:
    detail = describe_failure(
        "exec-1", {"owner": "apikey:a", "request": "not a request"}, TaskError(Error="X"), NOW
    )
    assert detail.owner == "apikey:a"
    assert detail.parameters is None
    assert detail.error.code is ErrorCode.INTERNAL_ERROR


class _CredentialsUntil(CredentialProvider):
    """Temporary credentials ending at a known moment, as a Lambda role's are."""

    METHOD = "test-temporary"

    def __init__(self, expiry: datetime) -> None:
        super().__init__()
        self.metadata = {
            "access_key": "AKIDTEMPORARY",
            "secret_key": "secret",
            "token": "session-token",
            "expiry_time": expiry.isoformat(),
        }

    def load(self) -> RefreshableCredentials:
        return RefreshableCredentials.create_from_metadata(
            self.metadata, refresh_using=lambda: self.metadata, method=self.METHOD
        )


def s3_client(credentials_until: datetime | None = None) -> Any:
    """A real S3 client (signing needs no network) with credentials that end at
    ``credentials_until``, or with the environment's long-lived ones."""
    session = botocore.session.Session()
    if credentials_until is not None:
        resolver = session.get_component("credential_provider")
        resolver.insert_before("env", _CredentialsUntil(credentials_until))
    return boto3.Session(botocore_session=session).client("s3", region_name="us-east-1")


def test_expires_at_is_the_earlier_of_ttl_and_credential_expiry() -> None:
    now = datetime.now(UTC)  # the credentials' expiry is checked against the clock when signing
    url, long_lived = presign_get(s3_client(now + timedelta(hours=1)), "b", "k", 300, now)
    _, short_lived = presign_get(s3_client(now + timedelta(seconds=60)), "b", "k", 300, now)
    _, unknown = presign_get(s3_client(), "b", "k", 300, now)

    assert "AKIDTEMPORARY" in url  # signed with the temporary credentials
    assert long_lived == now + timedelta(seconds=300)
    assert short_lived == now + timedelta(seconds=60)
    assert unknown == now + timedelta(seconds=300)


def test_signing_raises_the_first_failure_when_no_image_was_made() -> None:
    planned = plan_job(job(num_images=2), settings())
    outcomes = [
        ImageOutcome(index=1, seed=2, error=ErrorInfo(code=ErrorCode.MODEL_ERROR, message="x")),
        ImageOutcome(
            index=0, seed=1, error=ErrorInfo(code=ErrorCode.CONTENT_FILTERED, message="y")
        ),
    ]
    with pytest.raises(ContentFilteredError):
        sign_generated_images(planned, outcomes, s3_client(), 300, NOW)
