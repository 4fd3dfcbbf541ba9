"""What WebhookDeliveryFunction does with one queued event: whom to POST it to, signed, and what
the answer means.

Each message of WebhookDeliveryQueue is an EventBridge event from our bus: a result event ("Image
Generated", "Image Generation Failed", "Image Generation Cancelled") or an "Image Generation
Progress" event. The job's webhook comes from the jobs table; a job without one gets the stack-wide
default (WebhookUrl), completed events only. The payload is Standard Webhooks' ``{"type",
"timestamp", "data"}`` with the event's detail as data; the ``webhook-id`` comes from the
EventBridge event id, so every retry of a delivery carries the same id (receivers deduplicate on
it).

Outcomes: a 2xx is delivered; 410 Gone disables the job's webhook (no more deliveries for that
job); anything else (an error status, 429, a timeout, no connection) is retried by SQS: the
message's visibility is set to the next delay (full jitter under the retry schedule, at least
Retry-After) and the record is reported failed; after the last attempt the queue's redrive policy
moves it to the dead-letter queue.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imagegen_common.models import (
    IMAGE_GENERATED,
    IMAGE_GENERATION_CANCELLED,
    IMAGE_GENERATION_FAILED,
    IMAGE_GENERATION_PROGRESS,
    WebhookEvent,
    WebhookRequest,
)
from imagegen_common.webhook_target import UnsafeWebhookTargetError
from pinned_http import DeliveryConnectionError, HttpAnswer

WEBHOOK_TYPES: Final[dict[str, str]] = {
    IMAGE_GENERATED: "image.generated",
    IMAGE_GENERATION_FAILED: "image.generation_failed",
    IMAGE_GENERATION_CANCELLED: "image.generation_cancelled",
    IMAGE_GENERATION_PROGRESS: "image.generation_progress",
}
"""EventBridge detail-type -> the payload's ``type``."""
SUBSCRIPTION: Final[dict[str, WebhookEvent]] = {
    IMAGE_GENERATED: WebhookEvent.COMPLETED,
    IMAGE_GENERATION_FAILED: WebhookEvent.COMPLETED,
    IMAGE_GENERATION_CANCELLED: WebhookEvent.COMPLETED,
    IMAGE_GENERATION_PROGRESS: WebhookEvent.PROGRESS,
}
"""Which of a webhook's ``events`` a detail-type belongs to."""
MAX_VISIBILITY_SECONDS: Final = 43_200 - 120
"""SQS allows a message's visibility to reach 12 h after its receipt; this leaves the function's
own run time (WebhookDeliveryFunction's Timeout is 60 s) out of that."""


class BusEvent(BaseModel):
    """The part of an EventBridge event a delivery needs."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str = Field(min_length=1)
    detail_type: str = Field(alias="detail-type")
    time: datetime
    detail: dict[str, Any]


class Outcome(StrEnum):
    DELIVERED = "delivered"
    GONE = "gone"
    RETRY = "retry"


@dataclass(frozen=True)
class Delivery:
    """One signed POST to make, the same on every attempt but for its timestamp."""

    webhook_id: str
    url: str
    event_type: str
    job_id: str
    body: str
    per_job: bool
    """False for the stack-wide default target (there is no job webhook to disable)."""


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    status: int | None = None
    retry_after_s: float | None = None
    reason: str = ""


def parse_event(body: str) -> BusEvent | None:
    """The queued EventBridge event; None for a message that is not one of ours."""
    try:
        event = BusEvent.model_validate_json(body)
    except ValidationError:
        return None
    if event.detail_type not in WEBHOOK_TYPES or not event.detail.get("execution_id"):
        return None
    return event


def payload(event: BusEvent) -> str:
    """The Standard Webhooks body, serialized once: exactly these characters are signed."""
    document = {
        "type": WEBHOOK_TYPES[event.detail_type],
        "timestamp": event.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": event.detail,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True)


def plan_delivery(
    event: BusEvent, webhook: WebhookRequest | None, disabled: bool, default_url: str
) -> Delivery | None:
    """The delivery this event needs, or None: no target, disabled, or not subscribed."""
    job_id = str(event.detail["execution_id"])
    per_job = webhook is not None
    if webhook is None:
        if not default_url:
            return None
        webhook = WebhookRequest(url=default_url, events=[WebhookEvent.COMPLETED])
    elif disabled:
        return None
    if SUBSCRIPTION[event.detail_type] not in webhook.events:
        return None
    return Delivery(
        webhook_id=f"msg_{event.id}",
        url=str(webhook.url),
        event_type=WEBHOOK_TYPES[event.detail_type],
        job_id=job_id,
        body=payload(event),
        per_job=per_job,
    )


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a Retry-After header asks for (delay-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())


def classify(status: int, retry_after: str | None, now: datetime) -> AttemptResult:
    if 200 <= status < 300:
        return AttemptResult(Outcome.DELIVERED, status)
    if status == 410:
        return AttemptResult(Outcome.GONE, status, reason="the receiver answered 410 Gone")
    return AttemptResult(
        Outcome.RETRY,
        status,
        retry_after_s=parse_retry_after(retry_after, now),
        reason=f"the receiver answered {status}",
    )


def retry_delay_s(
    attempt: int,
    schedule_s: list[float],
    retry_after_s: float | None = None,
    uniform: Callable[[float, float], float] = random.uniform,
) -> int:
    """Seconds before attempt ``attempt + 1``: full jitter in [0, cap], the cap being the
    schedule's step for this attempt (its last step repeats), at least Retry-After, at most what
    SQS allows. Whole seconds: SQS visibility has no finer grain."""
    cap = schedule_s[min(max(attempt, 1), len(schedule_s)) - 1]
    delay = uniform(0.0, cap)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(math.ceil(delay), MAX_VISIBILITY_SECONDS)


class RetryLaterError(Exception):
    """The delivery failed and is retried by SQS (the record is reported as failed)."""


@dataclass
class Deliverer:
    """Delivers queued events; every dependency injectable, so tests run it without AWS."""

    webhook_of: Callable[[str], tuple[WebhookRequest | None, bool]]
    disable_webhook: Callable[[str, str], None]
    check_target: Callable[[str], list[str]]
    signing_headers: Callable[[str, datetime, str], dict[str, str]]
    post: Callable[[str, list[str], dict[str, str], bytes], HttpAnswer]
    set_visibility: Callable[[str, int], None]
    default_url: str
    schedule_s: list[float]
    attempts: int
    log: Callable[..., None]
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    uniform: Callable[[float, float], float] = random.uniform

    def handle(self, body: str, receive_count: int, receipt_handle: str) -> Outcome | None:
        """Deliver one message; None when it needs no delivery. Raises RetryLaterError after
        setting the message's visibility to the retry delay."""
        event = parse_event(body)
        if event is None:
            self.log("not an event this function delivers: dropped", body_excerpt=body[:300])
            return None
        job_id = str(event.detail["execution_id"])
        webhook, disabled = self.webhook_of(job_id)
        delivery = plan_delivery(event, webhook, disabled, self.default_url)
        if delivery is None:
            return None
        result = self.attempt(delivery)
        if result.outcome is Outcome.GONE:
            if delivery.per_job:
                self.disable_webhook(job_id, result.reason)
            self.log("webhook gone: disabled", job_id=job_id, webhook_id=delivery.webhook_id)
            return result.outcome
        if result.outcome is Outcome.DELIVERED:
            return result.outcome
        if receive_count >= self.attempts:
            # The last attempt: visible again at once, so the redrive policy moves it to the
            # dead-letter queue on the next receive instead of after the queue's timeout.
            delay = 0
        else:
            delay = retry_delay_s(
                receive_count, self.schedule_s, result.retry_after_s, self.uniform
            )
        self.set_visibility(receipt_handle, delay)
        raise RetryLaterError(
            f"attempt {receive_count} of {self.attempts} to {delivery.webhook_id} failed "
            f"({result.reason}); "
            + (f"next in {delay} s" if receive_count < self.attempts else "giving up")
        )

    def attempt(self, delivery: Delivery) -> AttemptResult:
        """One signed POST and what its answer means."""
        try:
            addresses = self.check_target(delivery.url)
        except UnsafeWebhookTargetError as error:
            if error.rule == "unresolvable":  # DNS may answer later
                return AttemptResult(Outcome.RETRY, reason=str(error))
            # Refused for good (it may have resolved to a public address at submit): never sent.
            self.log("webhook target refused", rule=error.rule, webhook_id=delivery.webhook_id)
            return AttemptResult(Outcome.GONE, reason=f"unsafe webhook target: {error.rule}")
        headers = self.signing_headers(delivery.webhook_id, self.now(), delivery.body)
        try:
            answer = self.post(delivery.url, addresses, headers, delivery.body.encode())
        except (DeliveryConnectionError, OSError) as error:  # no answer: retried
            return AttemptResult(Outcome.RETRY, reason=f"{type(error).__name__}: {error}")
        return classify(answer.status, answer.retry_after, self.now())
