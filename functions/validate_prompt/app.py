"""ValidatePromptFunction ("Validate Prompt" state): resolve and check a job, plan its images.

Once planned, the job's progress says where it goes next: queued for a GPU worker, or generating
on Bedrock (0 of its images made).
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from imagegen_common.aws import client
from imagegen_common.jobs import parse_job, plan_job
from imagegen_common.progress import planned_progress, publish_progress
from imagegen_common.settings import EventsSettings, GenerationSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = GenerationSettings()
events_settings = EventsSettings()
events = client("events")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    job = parse_job(event.get("job"))
    logger.append_keys(execution_id=job.job_id)
    planned = plan_job(job, settings)
    publish_progress(events, events_settings, planned_progress(planned))
    return planned.model_dump(mode="json")
