"""RecordJobProgressFunction: writes each "Image Generation Progress" event into the jobs table.

The one writer of progress (``imagegen_common.job_records.apply_progress``): conditional on the job
still running and on the event being newer than what the table holds, so events that arrive late,
twice or after the job's end change nothing they should not.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from imagegen_common.job_records import apply_progress, jobs_table
from imagegen_common.models import ImageGenerationProgressDetail
from imagegen_common.settings import JobsSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = JobsSettings()
table = jobs_table(settings.jobs_table_name, settings.job_record_retention_days)


class ProgressEnvelope(EventBridgeModel):
    detail: ImageGenerationProgressDetail


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    detail = parse(event=event, model=ProgressEnvelope).detail
    logger.append_keys(execution_id=detail.execution_id, stage=detail.stage)
    applied = apply_progress(table, detail)
    metric = "ProgressRecorded" if applied else "ProgressSuperseded"
    metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)
    return {"execution_id": detail.execution_id, "stage": detail.stage, "applied": applied}
