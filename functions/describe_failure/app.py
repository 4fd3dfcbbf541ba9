"""DescribeFailureFunction ("Describe Failure" state): the "Image Generation Failed" detail."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from imagegen_common.failures import describe_failure
from imagegen_common.models import TaskError

logger = Logger()
tracer = Tracer()
metrics = Metrics()


class DescribeFailureInput(BaseModel):
    execution_id: str
    job: dict[str, Any] | None = None
    error: TaskError


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    task = DescribeFailureInput.model_validate(event)
    logger.append_keys(execution_id=task.execution_id)
    detail = describe_failure(task.execution_id, task.job, task.error)
    logger.warning("job failed", error_code=detail.error.code, reason=detail.error.message)
    metrics.add_dimension(name="ErrorCode", value=detail.error.code)
    metrics.add_metric(name="JobsFailed", unit=MetricUnit.Count, value=1)
    return detail.model_dump(mode="json")
