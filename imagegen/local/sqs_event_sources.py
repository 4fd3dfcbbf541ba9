"""Lambda's SQS event source, locally: pollers that receive, invoke, and delete what succeeded.

moto invokes a function with an SQS event source when a message is sent: once, with
ApproximateReceiveCount "1", deleting the message unless the invocation failed as a whole; it
ignores ``batchItemFailures`` (ReportBatchItemFailures) and the visibility a function sets, so
retries, backoff and the redrive to a dead-letter queue never happen. ``moto_aws`` turns that off
and runs one ``SqsEventSourcePoller`` per mapping instead, which does what Lambda's pollers do:

- long-poll the queue (ReceiveMessage with every attribute), so a message is received only while
  visible and its ApproximateReceiveCount counts every receive, and SQS's redrive policy moves it to
  the dead-letter queue after maxReceiveCount receives;
- invoke the function with the batch in Lambda's event shape, through the local Lambda runtime;
- delete the messages that succeeded: all of them, or, for a function with ReportBatchItemFailures,
  all but those it names in ``batchItemFailures``; a failed invocation deletes none. What is not
  deleted comes back when its visibility timeout (the queue's, or what the function set) ends.

It talks to SQS through boto3 only, so it works against moto's server and its in-process mock
alike.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

POLLERS_PER_SOURCE = 2
"""Concurrent pollers per event source (Lambda starts with five; two keep a small machine calm)."""
WAIT_SECONDS = 1
"""Long-poll wait of each receive: short, so that stopping takes at most about this long."""

Invoke = Callable[[bytes], tuple[bytes, str | None]]
"""Runs one invocation: request body -> (payload, function error or None)."""


@dataclass(frozen=True)
class SqsEventSource:
    """One event source mapping from an SQS queue to a function."""

    queue_arn: str
    function_name: str
    batch_size: int = 10
    report_batch_item_failures: bool = False

    @property
    def region(self) -> str:
        return self.queue_arn.split(":")[3]

    @property
    def queue_name(self) -> str:
        return self.queue_arn.split(":")[5]

    @property
    def account_id(self) -> str:
        return self.queue_arn.split(":")[4]


def lambda_event(source: SqsEventSource, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The event Lambda hands a function for ``messages`` (ReceiveMessage's answer)."""
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message.get("Body", ""),
                "attributes": dict(message.get("Attributes") or {}),
                "messageAttributes": {
                    name: _lambda_message_attribute(value)
                    for name, value in (message.get("MessageAttributes") or {}).items()
                },
                "md5OfBody": message.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": source.queue_arn,
                "awsRegion": source.region,
            }
            for message in messages
        ]
    }


def _lambda_message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "stringValue": value.get("StringValue"),
        "binaryValue": value.get("BinaryValue"),
        "stringListValues": value.get("StringListValues", []),
        "binaryListValues": value.get("BinaryListValues", []),
        "dataType": value.get("DataType"),
    }


def succeeded_ids(
    source: SqsEventSource, message_ids: list[str], payload: bytes, function_error: str | None
) -> list[str]:
    """The messages an invocation settled, as Lambda decides it."""
    if function_error:
        return []
    if not source.report_batch_item_failures:
        return list(message_ids)
    try:
        answer = json.loads(payload) if payload else None
    except ValueError:
        return list(message_ids)  # not JSON: no failures reported, so all succeeded
    failures = answer.get("batchItemFailures") if isinstance(answer, dict) else None
    if not failures:
        return list(message_ids)
    failed: set[str] = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not identifier or identifier not in message_ids:
            return []  # Lambda treats a malformed answer as the whole batch failing
        failed.add(identifier)
    return [message_id for message_id in message_ids if message_id not in failed]


class SqsEventSourcePoller:
    """Pollers of one event source, until ``stop()``."""

    def __init__(
        self,
        source: SqsEventSource,
        sqs: Any,
        invoke_for: Callable[[str], Invoke | None],
        *,
        pollers: int = POLLERS_PER_SOURCE,
    ) -> None:
        self.source = source
        self._sqs = sqs
        self._invoke_for = invoke_for
        self._pollers = pollers
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queue_url: str | None = None

    def start(self) -> SqsEventSourcePoller:
        for number in range(self._pollers):
            thread = threading.Thread(
                target=self._run,
                name=f"sqs-event-source-{self.source.function_name}-{number}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._threads.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.poll_once():
                    continue
            except Exception:
                if self._stop.is_set():
                    return
                logger.exception("polling %s for %s failed", self.source.queue_arn, self.source)
                self._stop.wait(1.0)

    def poll_once(self, wait_seconds: int = WAIT_SECONDS) -> int:
        """Receive one batch, invoke, delete what succeeded; the number of messages received."""
        invoke = self._invoke_for(self.source.function_name)
        if invoke is None:  # the function is not wired to our runtime (yet): as if throttled
            self._stop.wait(0.2)
            return 0
        queue_url = self._url()
        messages = self._sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(self.source.batch_size, 10),
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return 0
        event = lambda_event(self.source, messages)
        payload, function_error = invoke(json.dumps(event).encode())
        if function_error:
            logger.warning(
                "%s failed on a batch of %d from %s: it comes back after its visibility timeout",
                self.source.function_name,
                len(messages),
                self.source.queue_name,
            )
        settled = set(
            succeeded_ids(self.source, [m["MessageId"] for m in messages], payload, function_error)
        )
        entries = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
            for index, message in enumerate(messages)
            if message["MessageId"] in settled
        ]
        if entries:
            try:
                self._sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
            except Exception:  # as on AWS: an undeleted message is received (and handled) again
                logger.exception("deleting settled messages from %s failed", queue_url)
        return len(messages)

    def _url(self) -> str:
        if self._queue_url is None:
            self._queue_url = self._sqs.get_queue_url(
                QueueName=self.source.queue_name, QueueOwnerAWSAccountId=self.source.account_id
            )["QueueUrl"]
        return self._queue_url
