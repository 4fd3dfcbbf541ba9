"""ValidatePromptFunction ("Validate Prompt" state): resolve and check a job, plan its images."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from imagegen_common.jobs import parse_job, plan_job
from imagegen_common.settings import GenerationSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = GenerationSettings()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    job = parse_job(event.get("job"))
    logger.append_keys(execution_id=job.job_id)
    return plan_job(job, settings).model_dump(mode="json")
