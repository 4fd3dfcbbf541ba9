"""GenerateWithBedrockFunction ("Generate One Image" state): one image of a job, stored in S3.

Each image's outcome (stored, or refused by the model) goes out as a progress event as soon as it
is known, so the job's status shows the images of a fan-out as they arrive.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from generation import generate_image_with_bedrock
from imagegen_common.aws import client
from imagegen_common.models import ImageSlot, Job, Stage
from imagegen_common.progress import progress_of, publish_progress
from imagegen_common.settings import EventsSettings, GenerationSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = GenerationSettings()
events_settings = EventsSettings()
bedrock_runtime = client("bedrock-runtime", settings.bedrock_region)
s3 = client("s3")
events = client("events")


class GenerateImageInput(BaseModel):
    """One iteration of the "Generate with Bedrock" Map: the job and the image to make."""

    job: Job
    image: ImageSlot


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    task = GenerateImageInput.model_validate(event)
    logger.append_keys(execution_id=task.job.job_id, image_index=task.image.index)
    outcome = generate_image_with_bedrock(
        task.job, task.image, bedrock_runtime, s3, settings.bedrock_prices_usd
    )
    metric = "ImagesGenerated" if outcome.succeeded else "ImagesRejected"
    metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)
    publish_progress(
        events, events_settings, progress_of(task.job, Stage.GENERATING, image=outcome)
    )
    return outcome.model_dump(mode="json")
