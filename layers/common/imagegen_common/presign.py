"""Pre-signed GET URLs for stored images, with the time they really stop working.

A pre-signed URL is signed with the caller's credentials. In Lambda those are the function role's
temporary credentials, and a URL dies when they expire, whatever ``ExpiresIn`` says. We report
``expires_at`` as the earlier of the two when the SDK knows the credentials' expiry; the template
keeps the default lifetime (300 s) far below any role session, so the two agree in practice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from imagegen_common.errors import describe_task_error, error_for_code
from imagegen_common.models import (
    Backend,
    ErrorCode,
    ErrorInfo,
    FailedImage,
    ImageGeneratedDetail,
    ImageOutcome,
    Job,
    Parameters,
    SignedImage,
)
from imagegen_common.pricing import total_cost


def credentials_expiry(s3_client: Any) -> datetime | None:
    """When the credentials that sign with ``s3_client`` expire, if the SDK knows it.

    botocore exposes it only on refreshable credentials (assumed roles, container/instance
    roles); static and environment credentials report none.
    """
    credentials = getattr(getattr(s3_client, "_request_signer", None), "_credentials", None)
    expiry = getattr(credentials, "_expiry_time", None)
    return expiry if isinstance(expiry, datetime) else None


def presign_get(
    s3_client: Any, bucket: str, key: str, ttl_seconds: int, now: datetime | None = None
) -> tuple[str, datetime]:
    """A GET URL for ``s3://bucket/key`` and the moment it stops working."""
    now = now or datetime.now(UTC)
    url = s3_client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl_seconds
    )
    expires_at = now + timedelta(seconds=ttl_seconds)
    credentials_end = credentials_expiry(s3_client)
    if credentials_end is not None:
        expires_at = min(expires_at, credentials_end.astimezone(UTC))
    return str(url), expires_at


def parameters_of(job: Job) -> Parameters:
    """What the job runs with: the request's texts and count, the planned size and controls."""
    return Parameters.of(job.request, job.width, job.height, job.controls)


def sign_generated_images(
    job: Job,
    outcomes: list[ImageOutcome],
    s3_client: Any,
    ttl_seconds: int,
    now: datetime | None = None,
) -> ImageGeneratedDetail:
    """The "Image Generated" detail for a job: a signed URL per image made, errors for the rest.

    Its cost is the sum of the outcomes' costs (made and failed images alike).
    Raises the error of the first failed image (e.g. ``ContentFilteredError``) when no image was
    made, so the workflow's failure path reports the real reason.
    """
    now = now or datetime.now(UTC)
    signed: list[SignedImage] = []
    failed: list[FailedImage] = []
    for outcome in sorted(outcomes, key=lambda item: item.index):
        if outcome.succeeded and outcome.bucket and outcome.s3_key:
            url, expires_at = presign_get(
                s3_client, outcome.bucket, outcome.s3_key, ttl_seconds, now
            )
            signed.append(
                SignedImage(
                    index=outcome.index,
                    url=url,
                    expires_at=expires_at,
                    s3_uri=f"s3://{outcome.bucket}/{outcome.s3_key}",
                    width=outcome.width or 0,
                    height=outcome.height or 0,
                    seed=outcome.seed,
                    content_type=outcome.content_type or "image/png",
                )
            )
        else:
            error = outcome.error or (
                describe_task_error(outcome.task_error)
                if outcome.task_error
                else ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message="the backend made no image")
            )
            failed.append(FailedImage(index=outcome.index, seed=outcome.seed, error=error))
    if not signed:
        first = (
            failed[0].error
            if failed
            else ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message="the job produced no images")
        )
        raise error_for_code(first)
    assert job.backend is not None, "a planned job has a backend"
    return ImageGeneratedDetail(
        execution_id=job.job_id,
        owner=job.owner,
        backend=job.backend,
        # After a fallback to the GPU the job still names the Bedrock model it asked for.
        model_id=job.model_id if job.backend is Backend.BEDROCK else None,
        parameters=parameters_of(job),
        images=signed,
        failed_images=failed,
        completed_at=now,
        cost=total_cost(outcomes),
    )
