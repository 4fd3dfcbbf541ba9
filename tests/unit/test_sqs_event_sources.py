"""The local SQS event source: batch item failures, visibility and the redrive, as on Lambda."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from imagegen.local.sqs_event_sources import (
    SqsEventSource,
    SqsEventSourcePoller,
    succeeded_ids,
)
from tests.webhook_receiver import WebhookReceiver

SOURCE = SqsEventSource("arn:aws:sqs:us-east-1:123456789012:q", "f", 10, True)


@pytest.mark.parametrize(
    ("payload", "error", "settled"),
    [
        (b'{"batchItemFailures": []}', None, ["a", "b"]),
        (b'{"batchItemFailures": [{"itemIdentifier": "b"}]}', None, ["a"]),
        (b'{"batchItemFailures": [{"itemIdentifier": "zz"}]}', None, []),  # malformed: all fail
        (b"null", None, ["a", "b"]),
        (b'{"errorType": "Boom"}', "Unhandled", []),
    ],
)
def test_what_an_invocation_settles(payload: bytes, error: str | None, settled: list[str]) -> None:
    assert succeeded_ids(SOURCE, ["a", "b"], payload, error) == settled


def test_without_report_batch_item_failures_a_success_settles_all() -> None:
    source = SqsEventSource(SOURCE.queue_arn, "f", 10, False)
    answer = b'{"batchItemFailures": [{"itemIdentifier": "b"}]}'
    assert succeeded_ids(source, ["a", "b"], answer, None) == ["a", "b"]


@pytest.fixture
def sqs() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sqs")


def test_failed_items_come_back_with_a_growing_receive_count_then_dead_letter(sqs: Any) -> None:
    dead = sqs.create_queue(QueueName="dead")["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    url = sqs.create_queue(
        QueueName="q",
        Attributes={
            "VisibilityTimeout": "0",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": "2"}),
        },
    )["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="fails")
    sqs.send_message(QueueUrl=url, MessageBody="succeeds")
    seen: list[tuple[str, str]] = []

    def invoke(body: bytes) -> tuple[bytes, str | None]:
        records = json.loads(body)["Records"]
        for record in records:
            assert record["eventSource"] == "aws:sqs"
            assert record["eventSourceARN"] == SOURCE.queue_arn
            seen.append((record["body"], record["attributes"]["ApproximateReceiveCount"]))
        failures = [{"itemIdentifier": r["messageId"]} for r in records if r["body"] == "fails"]
        return json.dumps({"batchItemFailures": failures}).encode(), None

    poller = SqsEventSourcePoller(SOURCE, sqs, lambda name: invoke if name == "f" else None)
    for _ in range(4):
        poller.poll_once(wait_seconds=0)

    assert ("succeeds", "1") in seen
    assert [count for body, count in seen if body == "fails"] == ["1", "2"]
    assert [body for body, _ in seen].count("succeeds") == 1  # deleted after its success
    moved = sqs.receive_message(QueueUrl=dead).get("Messages", [])
    assert [message["Body"] for message in moved] == ["fails"]


def test_a_function_not_wired_yet_receives_nothing(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="waits")
    poller = SqsEventSourcePoller(SOURCE, sqs, lambda name: None)
    assert poller.poll_once(wait_seconds=0) == 0
    assert len(sqs.receive_message(QueueUrl=url).get("Messages", [])) == 1


def test_the_receiver_helper_answers_from_its_script() -> None:
    import httpx

    with WebhookReceiver([500, 200]) as receiver:
        statuses = [httpx.post(receiver.url(), content=b"{}").status_code for _ in range(3)]
    assert statuses == [500, 200, 200]
