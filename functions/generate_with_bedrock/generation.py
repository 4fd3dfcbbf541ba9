"""Making one image of a job with Bedrock and storing it in S3."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imagegen_common.bedrock import generate_with_bedrock
from imagegen_common.errors import ContentFilteredError, ModelError
from imagegen_common.models import ImageOutcome, ImageSlot, Job
from imagegen_common.pricing import bedrock_image_cost, unbilled_image_cost


def generate_image_with_bedrock(
    job: Job,
    slot: ImageSlot,
    bedrock_runtime: Any,
    s3_client: Any,
    price_overrides: Mapping[str, float] | None = None,
) -> ImageOutcome:
    """Generate ``slot`` of ``job`` and store the image (in the job's output format) at
    ``s3://job.bucket/slot.s3_key``.

    The outcome carries the image's cost: the model's price per image (``price_overrides``
    first, then ``imagegen_common.pricing``'s table) when Bedrock made it, 0 when it did not.

    A filtered or failed image becomes an outcome with its error code, so one bad image does not
    sink the others. Throttling, transient and availability errors propagate: the workflow
    retries the first two and may fall back to the GPU on the last.
    """
    if job.model_id is None or job.width is None or job.height is None or job.bucket is None:
        raise ValueError("generate_image_with_bedrock needs a planned job (model, size, bucket)")
    try:
        image = generate_with_bedrock(
            bedrock_runtime,
            job.model_id,
            job.request.prompt,
            job.request.negative_prompt,
            job.width,
            job.height,
            slot.seed,
            job.controls.output_format,
        )
    except (ContentFilteredError, ModelError) as error:
        info = error.info()
        return ImageOutcome(
            index=slot.index,
            seed=slot.seed,
            error=info,
            cost=unbilled_image_cost(info.code.value),
        )
    s3_client.put_object(
        Bucket=job.bucket, Key=slot.s3_key, Body=image.data, ContentType=image.format.content_type
    )
    return ImageOutcome(
        index=slot.index,
        seed=image.seed if image.seed is not None else slot.seed,
        bucket=job.bucket,
        s3_key=slot.s3_key,
        width=image.width,
        height=image.height,
        content_type=image.format.content_type,
        cost=bedrock_image_cost(job.model_id, price_overrides),
    )
