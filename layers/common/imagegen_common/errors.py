"""Typed errors. A class's name is its Step Functions error name.

A Lambda task that raises ``ContentFilteredError`` fails with ``Error: "ContentFilteredError"``,
so the state machine's ``Retry``/``Catch`` ``ErrorEquals`` read like this module. Each class
carries the machine-readable :class:`ErrorCode` that failure events and the API report.
"""

from __future__ import annotations

import json
from typing import ClassVar

from imagegen_common.models import ErrorCode, ErrorInfo, TaskError


class ImageGenError(Exception):
    """Base of every error our code raises; ``code`` is what subscribers and API clients see.

    Job failures are defined here; the API's refusals (``ApiRefusal`` and its subclasses, in
    ``functions/api/refusals.py``) derive from this class too, so there is one hierarchy.
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message)


class InvalidPromptError(ImageGenError):
    """The request breaks a rule of the deployment or the model (deny-list, size, length).

    ``field`` names the request field at fault, so the API can answer 422 naming it.
    """

    code = ErrorCode.INVALID_PROMPT

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ContentFilteredError(ImageGenError):
    """The model's safety filter blocked the prompt or the image. Permanent."""

    code = ErrorCode.CONTENT_FILTERED


class ModelThrottledError(ImageGenError):
    """The model service asked us to slow down. Transient: retried with backoff and jitter."""

    code = ErrorCode.MODEL_THROTTLED


class ModelTransientError(ImageGenError):
    """A timeout or 5xx from the model service. Transient: retried."""

    code = ErrorCode.MODEL_ERROR


class ModelError(ImageGenError):
    """The model failed to make the image and trying again will not help."""

    code = ErrorCode.MODEL_ERROR


class ModelUnavailableError(ImageGenError):
    """The model cannot be used from this account (no access, end of life, not in region).

    The workflow may send the job to the fallback backend; content filtering and bad input
    never take that path.
    """

    code = ErrorCode.MODEL_UNAVAILABLE


ERRORS_BY_NAME: dict[str, type[ImageGenError]] = {
    cls.__name__: cls
    for cls in (
        InvalidPromptError,
        ContentFilteredError,
        ModelThrottledError,
        ModelTransientError,
        ModelError,
        ModelUnavailableError,
    )
}

_TIMEOUT_ERRORS = {"States.Timeout", "States.HeartbeatTimeout"}


def error_for_code(info: ErrorInfo) -> ImageGenError:
    """The exception to raise for an error code (e.g. when no image of a job was made)."""
    for cls in ERRORS_BY_NAME.values():
        if cls.code == info.code and not issubclass(cls, ModelTransientError):
            return cls(info.message)
    return ImageGenError(info.message)


def describe_task_error(task_error: TaskError) -> ErrorInfo:
    """Turn a Step Functions ``{Error, Cause}`` pair into our ``{code, message}``.

    ``Cause`` is a JSON document with ``errorMessage`` when a Lambda function raised, and the
    plain text a worker passed to ``SendTaskFailure`` otherwise. A worker's ``Error`` may be an
    :class:`ErrorCode` value itself.
    """
    message = _message_from_cause(task_error.cause) or task_error.error
    name = task_error.error
    if name in ERRORS_BY_NAME:
        return ErrorInfo(code=ERRORS_BY_NAME[name].code, message=message)
    if name in ErrorCode.__members__:
        return ErrorInfo(code=ErrorCode(name), message=message)
    if name in _TIMEOUT_ERRORS:
        return ErrorInfo(
            code=ErrorCode.TIMEOUT,
            message=f"The generation backend did not report in time ({name}).",
        )
    return ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message=f"{name}: {message}")


def _message_from_cause(cause: str | None) -> str | None:
    if not cause:
        return None
    try:
        parsed = json.loads(cause)
    except ValueError:
        return cause
    if isinstance(parsed, dict) and isinstance(parsed.get("errorMessage"), str):
        return str(parsed["errorMessage"])
    return cause
