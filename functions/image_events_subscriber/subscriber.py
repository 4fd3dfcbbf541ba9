"""What the example subscriber makes of a result event: the typed detail and a short summary."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from imagegen_common.errors import ImageGenError
from imagegen_common.models import (
    RESULT_EVENT_DETAILS,
    ImageGeneratedDetail,
    ImageGenerationCancelledDetail,
    ImageGenerationFailedDetail,
)


class UnknownDetailTypeError(ImageGenError):
    """The event is not one of ours; the rule's pattern should not have matched it."""


class ResultEvent(BaseModel):
    detail_type: str
    execution_id: str
    metric_name: str
    image_urls: list[str] = []
    error_code: str | None = None


def summarise_result_event(detail_type: str, detail: dict[str, Any]) -> ResultEvent:
    model = RESULT_EVENT_DETAILS.get(detail_type)
    if model is None:
        raise UnknownDetailTypeError(f"unexpected detail-type {detail_type!r}")
    parsed = model.model_validate(detail)
    if isinstance(parsed, ImageGeneratedDetail):
        return ResultEvent(
            detail_type=detail_type,
            execution_id=parsed.execution_id,
            metric_name="ImagesDelivered",
            image_urls=[image.url for image in parsed.images],
        )
    if isinstance(parsed, ImageGenerationFailedDetail):
        return ResultEvent(
            detail_type=detail_type,
            execution_id=parsed.execution_id,
            metric_name="FailuresDelivered",
            error_code=parsed.error.code,
        )
    assert isinstance(parsed, ImageGenerationCancelledDetail)
    return ResultEvent(
        detail_type=detail_type,
        execution_id=parsed.execution_id,
        metric_name="CancellationsDelivered",
    )
