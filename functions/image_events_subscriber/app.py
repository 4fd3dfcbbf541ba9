"""ImageEventsSubscriberFunction: an example subscriber of the result events.

Copy its folder to start your own: it parses the EventBridge envelope with powertools' parser, turns
``detail`` into the typed model of its detail-type, and logs what a downstream system would act on.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from subscriber import ResultEvent, summarise_result_event


class ResultEventEnvelope(EventBridgeModel):
    """EventBridge's envelope; ``detail`` is parsed by its detail-type below."""

    detail: dict[str, Any]


logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    envelope = parse(event=event, model=ResultEventEnvelope)
    result: ResultEvent = summarise_result_event(envelope.detail_type, envelope.detail)
    logger.info("result event", **result.model_dump(mode="json"))
    metrics.add_metric(name=result.metric_name, unit=MetricUnit.Count, value=1)
    return result.model_dump(mode="json")
