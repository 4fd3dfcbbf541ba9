"""The worker's AWS calls: its queue (SQS) and its tasks (Step Functions), each call timed.

Every method is safe to call from several threads at once (boto3 clients are), and none raises
for what AWS answers: a failure is logged and told by the return value, since the worker's
stages must go on whatever one call does. SQS's batch APIs are used where there are ones
(``DeleteMessageBatch``, ``ChangeMessageVisibilityBatch``, up to 10 messages a call); Step
Functions has none for task answers or heartbeats, so the worker makes those concurrently.

A task that has ended (stopped, timed out, already answered) answers ``TaskTimedOut``,
``InvalidToken`` or ``TaskDoesNotExist``: its job must be dropped and its message deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from gpu_service.stage_times import StageTimes
from imagegen_common.models import ErrorCode, GenerationResult

logger = logging.getLogger(__name__)

TASK_GONE = frozenset({"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"})
"""Step Functions' answers meaning the task has ended."""
CAUSE_LIMIT = 32_768
"""SendTaskFailure's limit on the cause."""
SQS_BATCH = 10
"""The most messages one SQS batch call takes."""


def client_error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class TaskCalls:
    """``SendTaskHeartbeat``, ``SendTaskSuccess`` and ``SendTaskFailure`` of one worker."""

    def __init__(self, stepfunctions: Any, times: StageTimes) -> None:
        self._sfn = stepfunctions
        self._times = times

    def heartbeat(self, token: str, job_id: str) -> bool:
        """False when the task has ended (the job must be dropped); True otherwise, also when
        the call failed (the task is not known to have ended: the next heartbeat asks again)."""
        try:
            with self._times.timed("SendTaskHeartbeat"):
                self._sfn.send_task_heartbeat(taskToken=token)
        except ClientError as error:
            if client_error_code(error) in TASK_GONE:
                logger.warning("job %s: task gone (%s)", job_id, client_error_code(error))
                return False
            logger.exception("heartbeat for job %s failed", job_id)
        except Exception:
            logger.exception("heartbeat for job %s failed", job_id)
        return True

    def succeed(self, token: str, result: GenerationResult) -> bool:
        """True once the task is settled (answered now, or already gone): delete the message."""
        return self._answer(
            "SendTaskSuccess",
            self._sfn.send_task_success,
            taskToken=token,
            output=result.model_dump_json(),
        )

    def fail(self, token: str, code: ErrorCode, cause: str) -> bool:
        """True once the task is settled (answered now, or already gone): delete the message."""
        return self._answer(
            "SendTaskFailure",
            self._sfn.send_task_failure,
            taskToken=token,
            error=code.value,
            cause=cause[:CAUSE_LIMIT],
        )

    def _answer(self, name: str, call: Any, **kwargs: Any) -> bool:
        try:
            with self._times.timed(name):
                call(**kwargs)
        except ClientError as error:
            if client_error_code(error) in TASK_GONE:
                logger.warning("task already gone (%s): dropping", client_error_code(error))
                return True
            logger.exception("reporting the task failed; the message will reappear")
            return False
        except Exception:
            logger.exception("reporting the task failed; the message will reappear")
            return False
        return True


class QueueCalls:
    """The GPU job queue: receive, delete and change visibility, in SQS's batches."""

    def __init__(self, sqs: Any, queue_url: str, times: StageTimes) -> None:
        self._sqs = sqs
        self.queue_url = queue_url
        self._times = times

    def receive(
        self, max_messages: int, wait_seconds: int, visibility_seconds: int
    ) -> list[dict[str, Any]]:
        """Up to ``max_messages`` messages (raises what SQS raises: the caller backs off)."""
        with self._times.timed("ReceiveMessage"):
            response = self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=max_messages,
                WaitTimeSeconds=wait_seconds,
                VisibilityTimeout=visibility_seconds,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        return list(response.get("Messages", []))

    def delete(self, receipt_handles: Sequence[str]) -> list[str]:
        """Delete the messages; returns the receipt handles that could not be (they reappear,
        and their tasks are found settled at the next worker's first heartbeat)."""
        return self._batches(
            "DeleteMessageBatch",
            self._sqs.delete_message_batch,
            receipt_handles,
            lambda index, handle: {"Id": str(index), "ReceiptHandle": handle},
        )

    def change_visibility(self, receipt_handles: Sequence[str], seconds: int) -> list[str]:
        """Give the messages ``seconds`` more of invisibility (0: visible again at once);
        returns the receipt handles whose change failed."""
        return self._batches(
            "ChangeMessageVisibilityBatch",
            self._sqs.change_message_visibility_batch,
            receipt_handles,
            lambda index, handle: {
                "Id": str(index),
                "ReceiptHandle": handle,
                "VisibilityTimeout": seconds,
            },
        )

    def _batches(
        self, name: str, call: Any, receipt_handles: Sequence[str], entry: Any
    ) -> list[str]:
        failed: list[str] = []
        for start in range(0, len(receipt_handles), SQS_BATCH):
            chunk = list(receipt_handles[start : start + SQS_BATCH])
            try:
                with self._times.timed(name):
                    response = call(
                        QueueUrl=self.queue_url,
                        Entries=[entry(index, handle) for index, handle in enumerate(chunk)],
                    )
            except Exception:
                logger.exception("%s of %d messages failed", name, len(chunk))
                failed += chunk
                continue
            for failure in response.get("Failed", []):
                logger.warning("%s: message %s failed: %s", name, failure.get("Id"), failure)
                failed.append(chunk[int(failure["Id"])])
        return failed
