"""WebhookDeliveryFunction: POSTs each job's events to its webhook, signed (Standard Webhooks).

WebhookDeliveryQueue receives our bus's result and progress events (WebhookDeliveryRule); each
message is one EventBridge event, delivered by ``deliveries.Deliverer`` (see there for the rules).
A failed delivery is reported as a batch item failure after its message's visibility was set to the
retry delay, so SQS brings it back then; the queue's redrive policy ends the retries in
WebhookDeliveryDeadLetterQueue.
"""

from datetime import timedelta
from functools import partial
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

from deliveries import Deliverer, Outcome
from imagegen_common import job_records
from imagegen_common.aws import client
from imagegen_common.settings import WebhookDeliverySettings
from imagegen_common.webhook_target import check_webhook_target
from pinned_http import post_pinned
from signing import SigningKeys, signature_headers

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)
settings = WebhookDeliverySettings()
sqs = client("sqs")
table = job_records.jobs_table(settings.jobs_table_name, settings.job_record_retention_days)
keys = SigningKeys(
    client("secretsmanager"),
    settings.webhook_secret_arn,
    overlap=timedelta(seconds=settings.webhook_secret_overlap_seconds),
    cache_s=settings.webhook_secret_cache_seconds,
)


def _set_visibility(receipt_handle: str, seconds: int) -> None:
    sqs.change_message_visibility(
        QueueUrl=settings.webhook_delivery_queue_url,
        ReceiptHandle=receipt_handle,
        VisibilityTimeout=seconds,
    )


deliverer = Deliverer(
    webhook_of=partial(job_records.webhook_of, table),
    disable_webhook=partial(job_records.disable_webhook, table),
    check_target=partial(check_webhook_target, allow_loopback=settings.webhook_allow_loopback),
    signing_headers=lambda webhook_id, at, body: signature_headers(
        keys.current(), webhook_id, at, body
    ),
    post=partial(post_pinned, timeout_s=settings.webhook_timeout_seconds),
    set_visibility=_set_visibility,
    default_url=settings.webhook_url,
    schedule_s=settings.webhook_retry_schedule_seconds,
    attempts=settings.webhook_delivery_attempts,
    log=logger.info,
)

_METRIC_OF = {
    Outcome.DELIVERED: "WebhooksDelivered",
    Outcome.GONE: "WebhooksGone",
}


def record_handler(record: SQSRecord) -> None:
    try:
        outcome = deliverer.handle(
            record.body,
            int(record.attributes.approximate_receive_count),
            record.receipt_handle,
        )
    except Exception:
        metrics.add_metric(name="WebhookAttemptsFailed", unit=MetricUnit.Count, value=1)
        raise
    if outcome in _METRIC_OF:
        metrics.add_metric(name=_METRIC_OF[outcome], unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
