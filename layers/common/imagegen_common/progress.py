"""Putting "Image Generation Progress" events on our bus: how a job tells where it is.

Whoever moves a job on (Validate Prompt, each Bedrock image, the GPU worker, Create Pre-signed
URLs) calls :func:`publish_progress`; RecordJobProgressFunction writes the events into the jobs
table, and webhooks may forward them. Progress is a courtesy: it never fails the job, so an AWS
error here is logged and swallowed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from imagegen_common.models import (
    IMAGE_GENERATION_PROGRESS,
    Backend,
    ImageGenerationProgressDetail,
    ImageOutcome,
    Job,
    Progress,
    Stage,
)
from imagegen_common.settings import EventsSettings

logger = logging.getLogger(__name__)


def publish_progress(
    events_client: Any, settings: EventsSettings, detail: ImageGenerationProgressDetail
) -> bool:
    """Put one progress event on the bus. False (logged) when EventBridge refused it."""
    try:
        answer = events_client.put_events(
            Entries=[
                {
                    "EventBusName": settings.event_bus_name,
                    "Source": settings.event_source,
                    "DetailType": IMAGE_GENERATION_PROGRESS,
                    "Detail": detail.model_dump_json(),
                }
            ]
        )
    except (ClientError, BotoCoreError) as error:
        logger.warning(
            "progress event not put: %s", error, extra={"execution_id": detail.execution_id}
        )
        return False
    if answer.get("FailedEntryCount"):
        logger.warning(
            "progress event refused: %s",
            answer.get("Entries"),
            extra={"execution_id": detail.execution_id},
        )
        return False
    return True


def progress_of(
    job: Job,
    stage: Stage,
    *,
    progress: Progress | None = None,
    image: ImageOutcome | None = None,
    at: datetime | None = None,
) -> ImageGenerationProgressDetail:
    """The progress detail of ``job`` at ``stage`` now."""
    return ImageGenerationProgressDetail(
        execution_id=job.job_id,
        owner=job.owner,
        stage=stage,
        backend=job.backend,
        progress=progress,
        image=image,
        at=at or datetime.now(UTC),
    )


def images_progress(done: int, job: Job) -> Progress:
    """Progress of a Bedrock job counted in images (``done`` of the job's ``num_images``)."""
    steps = max(job.request.num_images, 1)
    return Progress(step=done, steps=steps, percent=round(100 * done / steps, 1), unit="images")


def planned_progress(job: Job, at: datetime | None = None) -> ImageGenerationProgressDetail:
    """Where a job is once "Validate Prompt" has planned it: queued for a GPU worker, or (Bedrock)
    generating, none of its images made yet."""
    if job.backend is Backend.GPU:
        return progress_of(job, Stage.QUEUED, at=at)
    return progress_of(job, Stage.GENERATING, progress=images_progress(0, job), at=at)
