"""FailLostGpuJobsFunction: drains the GPU job dead-letter queue.

A GPU job reaches the dead-letter queue when every worker that took it stopped without reporting
it (crashed, was killed, lost its node) GpuJobMaxReceives times over. Its execution is still
waiting on the task token, with nothing left to answer it: this function fails the task with
``WORKER_LOST``, so the workflow's failure path emits "Image Generation Failed" now rather than
at the job's deadline.

A message without a readable task token (a poison message: not JSON, too deep, not ours) cannot be
answered by anyone; it is logged with an excerpt and counted, and leaves the queue.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError
from pydantic import BaseModel, ValidationError

from imagegen_common.aws import client
from imagegen_common.models import ErrorCode

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)
sfn = client("stepfunctions")

WORKER_LOST_CAUSE = (
    "No GPU worker finished this job: every worker that took it stopped without reporting it "
    "(crashed, killed, or lost its node). See the GPU workers' logs."
)
TASK_ALREADY_ENDED = {"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"}
"""Answers meaning the execution no longer waits on this token (stopped, timed out, answered)."""
_EXCERPT_CHARS = 500


class TokenCarrier(BaseModel):
    """The part of a GPU job message this function needs; the rest may be anything."""

    task_token: str


def fail_lost_job(sfn_client: Any, body: str) -> bool:
    """Fail the task of a lost GPU job; False when the message carries no task token.

    A task that has already ended needs nothing more. Any other error propagates, so the message
    stays on the dead-letter queue and is tried again.
    """
    try:
        # pydantic's JSON parser bounds nesting and number sizes itself: any body is safe here.
        token = TokenCarrier.model_validate_json(body).task_token
    except ValidationError:
        return False
    try:
        sfn_client.send_task_failure(
            taskToken=token, error=ErrorCode.WORKER_LOST.value, cause=WORKER_LOST_CAUSE
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in TASK_ALREADY_ENDED:
            raise
        logger.info("the lost job's task had already ended", reason=str(error))
    return True


def record_handler(record: SQSRecord) -> None:
    if fail_lost_job(sfn, record.body):
        metrics.add_metric(name="GpuJobsLost", unit=MetricUnit.Count, value=1)
        return
    logger.error(
        "poison message on the GPU job queue: no task token to answer",
        message_id=record.message_id,
        body_excerpt=record.body[:_EXCERPT_CHARS],
    )
    metrics.add_metric(name="GpuPoisonMessages", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
