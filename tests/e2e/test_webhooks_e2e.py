"""Signed webhooks end to end on the local stack: retries, 410, dead letters, the stack-wide URL,
the SSRF guard at submit, and many jobs at once.

The shared stack runs with loopback webhooks allowed (receivers on 127.0.0.1), the stack-wide
WebhookUrl pointing at the session's receiver's /default path, and 1-second retry steps with 3
attempts, so that retries and the dead-letter queue show within seconds. Each test's receiver
paths are its own; its jobs are Bedrock jobs (the local stand-in).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from standardwebhooks.webhooks import Webhook

from imagegen.webhooks import whsec_form
from tests.e2e.local_stack_harness import Harness, until
from tests.webhook_receiver import Received, WebhookReceiver

WEBHOOK_TYPE_FOR_STATUS = {
    "SUCCEEDED": "image.generated",
    "FAILED": "image.generation_failed",
    "TIMED_OUT": "image.generation_failed",
    "ABORTED": "image.generation_cancelled",
}
DEADLINE_S = 120.0


@pytest.fixture
def receiver(webhook_receiver: WebhookReceiver) -> WebhookReceiver:
    return webhook_receiver


@pytest.fixture
def secret(harness: Harness) -> str:
    assert harness.stack.stack is not None
    function = harness.stack.stack.functions["WebhookDeliveryFunction"]
    arn = function.environment["WEBHOOK_SECRET_ARN"]
    value = boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    return whsec_form(value)


def job(path: str, receiver: WebhookReceiver, **webhook: Any) -> dict[str, Any]:
    return {
        "prompt": "a lighthouse on a cliff at dawn",
        "backend": "bedrock",
        "webhook": {"url": receiver.url(path), **webhook},
    }


def for_job(received: list[Received], execution_id: str, path: str) -> list[Received]:
    return [
        delivery
        for delivery in received
        if delivery.path == path
        and json.loads(delivery.body)["data"].get("execution_id") == execution_id
    ]


def deliveries_settled(harness: Harness) -> bool:
    """No delivery waiting or in flight on WebhookDeliveryQueue."""
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=harness.queue_url("WebhookDeliveryQueue"),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return attributes == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }


def test_a_failing_receiver_gets_the_same_signed_delivery_until_it_answers_200(
    harness: Harness, receiver: WebhookReceiver, secret: str
) -> None:
    receiver.answer_path("/retry", [500, 500, 200])
    execution_id = harness.submit(job("/retry", receiver))

    received = receiver.wait_for(
        lambda all_: len(for_job(all_, execution_id, "/retry")) >= 3, DEADLINE_S, "3 attempts"
    )
    until(lambda: deliveries_settled(harness), 30, "the delivery queue to settle")

    attempts = for_job(receiver.received, execution_id, "/retry")
    assert [attempt.status for attempt in attempts] == [500, 500, 200]
    assert len({attempt.webhook_id for attempt in attempts}) == 1
    assert attempts[0].webhook_id.startswith("msg_")
    for attempt in attempts:
        payload = Webhook(secret).verify(attempt.body, attempt.headers)
        assert payload["type"] == "image.generated"
        assert payload["data"]["execution_id"] == execution_id
    assert received  # the receiver saw them as they came


def test_progress_goes_only_to_webhooks_that_asked_for_it(
    harness: Harness, receiver: WebhookReceiver, secret: str
) -> None:
    both = harness.submit(job("/both", receiver, events=["progress", "completed"]))
    completed_only = harness.submit(job("/completed", receiver, events=["completed"]))

    for execution_id, path in ((both, "/both"), (completed_only, "/completed")):
        receiver.wait_for(
            lambda all_, e=execution_id, p=path: any(
                json.loads(d.body)["type"] == "image.generated" for d in for_job(all_, e, p)
            ),
            DEADLINE_S,
            f"the result delivery on {path}",
        )
    until(lambda: deliveries_settled(harness), 30, "the delivery queue to settle")

    types = [
        Webhook(secret).verify(d.body, d.headers)["type"]
        for d in for_job(receiver.received, both, "/both")
    ]
    assert types.count("image.generated") == 1
    assert types.count("image.generation_progress") >= 1, types
    assert set(types) == {"image.generation_progress", "image.generated"}, types
    only = [
        json.loads(d.body)["type"] for d in for_job(receiver.received, completed_only, "/completed")
    ]
    assert only == ["image.generated"]


def test_a_private_webhook_address_is_refused_at_submit(harness: Harness) -> None:
    for url in ("https://10.0.0.1/hooks", "https://169.254.169.254/latest", "http://example.com/"):
        response = harness.request(
            "POST", "/generate", {"prompt": "a lighthouse", "webhook": {"url": url}}
        )
        assert response.status_code == 422, (url, response.text)
        fields = response.json()["error"].get("fields") or []
        assert any(field["field"] == "webhook.url" for field in fields), response.text


def test_jobs_without_a_webhook_go_to_the_stack_wide_url(
    harness: Harness, receiver: WebhookReceiver, secret: str
) -> None:
    execution_id = harness.submit(
        {"prompt": "a lighthouse, no webhook of its own", "backend": "bedrock"}
    )

    receiver.wait_for(
        lambda all_: bool(for_job(all_, execution_id, "/default")), DEADLINE_S, "the delivery"
    )
    [delivery] = for_job(receiver.received, execution_id, "/default")
    assert Webhook(secret).verify(delivery.body, delivery.headers)["type"] == "image.generated"


def test_410_disables_the_webhook_and_nothing_more_is_sent(
    harness: Harness, receiver: WebhookReceiver
) -> None:
    receiver.answer_path("/gone", [410])
    execution_id = harness.submit(job("/gone", receiver, events=["completed", "progress"]))

    receiver.wait_for(
        lambda all_: bool(for_job(all_, execution_id, "/gone")), DEADLINE_S, "the first delivery"
    )
    harness.wait_until_ended([execution_id], DEADLINE_S)
    # Every event of the job is on the bus, so in the delivery queue; then none is waiting.
    harness.events_by_execution([execution_id])
    until(lambda: deliveries_settled(harness), 30, "the delivery queue to settle")
    assert len(for_job(receiver.received, execution_id, "/gone")) == 1


def test_a_receiver_that_stays_down_gets_attempts_then_the_dead_letter_queue(
    harness: Harness,
) -> None:
    down = WebhookReceiver([200]).start()
    url = down.url("/down")
    down.stop()  # connection refused from now on
    execution_id = harness.submit(
        {"prompt": "nobody listens", "backend": "bedrock", "webhook": {"url": url}}
    )

    sqs = boto3.client("sqs")
    dead_letters = harness.queue_url("WebhookDeliveryDeadLetterQueue")
    found: list[dict[str, Any]] = []

    def dead_lettered() -> bool:
        for message in sqs.receive_message(
            QueueUrl=dead_letters,
            MaxNumberOfMessages=10,
            AttributeNames=["ApproximateReceiveCount"],
        ).get("Messages", []):
            event = json.loads(message["Body"])
            if event["detail"].get("execution_id") == execution_id:
                found.append(event)
            sqs.delete_message(QueueUrl=dead_letters, ReceiptHandle=message["ReceiptHandle"])
        return bool(found)

    until(dead_lettered, DEADLINE_S, "the delivery in the dead-letter queue")
    assert found[0]["detail-type"] == "Image Generated"


def test_many_jobs_at_once_each_get_exactly_one_delivery(
    harness: Harness, receiver: WebhookReceiver, secret: str
) -> None:
    jobs = 20
    with ThreadPoolExecutor(max_workers=8) as pool:
        execution_ids = list(
            pool.map(lambda n: harness.submit(job("/load", receiver)), range(jobs))
        )
    assert len(set(execution_ids)) == jobs

    receiver.wait_for(
        lambda all_: all(for_job(all_, execution_id, "/load") for execution_id in execution_ids),
        DEADLINE_S * 2,
        f"a delivery for each of {jobs} jobs",
    )
    until(lambda: deliveries_settled(harness), 60, "the delivery queue to settle")
    final = harness.wait_until_ended(execution_ids, DEADLINE_S)
    for execution_id in execution_ids:
        # Exactly one delivery: the job's one terminal event, whichever it is (a loaded machine
        # may fail a job: its failure is delivered, once).
        [delivery] = for_job(receiver.received, execution_id, "/load")
        payload = Webhook(secret).verify(delivery.body, delivery.headers)
        assert payload["type"] == WEBHOOK_TYPE_FOR_STATUS[final[execution_id]]
    assert not harness.server_errors
