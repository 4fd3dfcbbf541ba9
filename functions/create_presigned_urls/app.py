"""CreatePresignedUrlsFunction ("Create Pre-signed URLs" state): the "Image Generated" detail."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from imagegen_common.aws import client
from imagegen_common.models import ImageOutcome, Job, Stage
from imagegen_common.presign import sign_generated_images
from imagegen_common.progress import progress_of, publish_progress
from imagegen_common.settings import EventsSettings, ImagesSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = ImagesSettings()
events_settings = EventsSettings()
s3 = client("s3")
events = client("events")


class SignImagesInput(BaseModel):
    job: Job
    images: list[ImageOutcome]


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    task = SignImagesInput.model_validate(event)
    logger.append_keys(execution_id=task.job.job_id)
    publish_progress(events, events_settings, progress_of(task.job, Stage.SIGNING))
    detail = sign_generated_images(task.job, task.images, s3, settings.presigned_url_ttl_seconds)
    return detail.model_dump(mode="json")
