"""The "Image Generation Failed" detail, built from whatever the workflow knew when it failed."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from imagegen_common.errors import describe_task_error
from imagegen_common.models import (
    Backend,
    Cost,
    ImageGenerationFailedDetail,
    ImageOutcome,
    Job,
    Parameters,
    TaskError,
)
from imagegen_common.presign import parameters_of
from imagegen_common.pricing import total_cost

NOTHING_SPENT = Cost(
    usd=0.0,
    basis="no image was made, so none was billed: a job fails only when none of its images "
    "was made (Bedrock bills per image made; a GPU call that failed is not charged to its jobs)",
)


def describe_failure(
    execution_id: str,
    job: dict[str, Any] | None,
    error: TaskError,
    now: datetime | None = None,
    spent: Iterable[ImageOutcome] | None = None,
) -> ImageGenerationFailedDetail:
    """A failure event for ``execution_id``.

    ``job`` is the workflow's ``$.job`` as it was when the error was caught: it may be a job that
    never passed validation, so it is read leniently and only what parses is reported.
    ``spent`` are the outcomes of images generated before the failure, when the workflow still
    has them (``$.generation``); their costs are the job's cost. Without them the cost is 0,
    which is what the workflow spends on a failed job today: it fails a job only when none of
    its images was made.
    """
    now = now or datetime.now(UTC)
    owner = str((job or {}).get("owner") or "unknown")
    backend: Backend | None = None
    model_id: str | None = None
    parameters: Parameters | None = None
    try:
        parsed = Job.model_validate(job or {})
    except ValidationError:
        pass
    else:
        backend, model_id, parameters = parsed.backend, parsed.model_id, parameters_of(parsed)
    return ImageGenerationFailedDetail(
        execution_id=execution_id,
        owner=owner,
        backend=backend,
        model_id=model_id,
        parameters=parameters,
        error=describe_task_error(error),
        failed_at=now,
        cost=NOTHING_SPENT if spent is None else total_cost(spent),
    )
