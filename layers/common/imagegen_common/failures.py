"""The "Image Generation Failed" detail, built from whatever the workflow knew when it failed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from imagegen_common.errors import describe_task_error
from imagegen_common.models import (
    Backend,
    ImageGenerationFailedDetail,
    Job,
    Parameters,
    TaskError,
)
from imagegen_common.presign import parameters_of


def describe_failure(
    execution_id: str,
    job: dict[str, Any] | None,
    error: TaskError,
    now: datetime | None = None,
) -> ImageGenerationFailedDetail:
    """A failure event for ``execution_id``.

    ``job`` is the workflow's ``$.job`` as it was when the error was caught: it may be a job that
    never passed validation, so it is read leniently and only what parses is reported.
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
    )
