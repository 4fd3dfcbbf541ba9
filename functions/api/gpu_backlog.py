"""The GPU backlog check: POST /generate answers 429 rather than queue a GPU job that would wait
too long behind others."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from imagegen_common.models import ErrorCode
from refusals import ApiRefusal


class GpuBacklogFullError(ApiRefusal):
    """The GPU queue already holds as many waiting jobs as the deployment allows (429)."""

    code = ErrorCode.TOO_MANY_REQUESTS
    http_status = HTTPStatus.TOO_MANY_REQUESTS


def check_gpu_backlog(sqs: Any, queue_url: str, max_backlog: int, retry_after_seconds: int) -> None:
    """Refuse a GPU job while ``max_backlog`` or more jobs wait in the GPU queue.

    Counts the messages waiting (``ApproximateNumberOfMessages``), not those being worked on: a
    job accepted behind a long queue would spend its wait against the workflow's timeouts.
    """
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    waiting = int(attributes["ApproximateNumberOfMessages"])
    if waiting >= max_backlog:
        raise GpuBacklogFullError(
            f"the GPU backlog is full ({waiting} jobs waiting, limit {max_backlog}); "
            f"retry in {retry_after_seconds} s",
            retry_after_seconds=retry_after_seconds,
        )
