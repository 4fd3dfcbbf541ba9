"""What the API refuses a request with: typed errors that carry their HTTP status and ErrorCode.

Raise one of these anywhere below a route; ``app`` maps every one to a response in one place, as
``{"error": {"code", "message", "fields"?}}`` (:class:`~imagegen_common.models.ErrorResponse`).
They derive from the layer's ``ImageGenError``, so there is one hierarchy; job failures
(``imagegen_common.errors``) are another matter: they end a workflow, and their codes are what
``GET /generate/{id}`` and failure events report.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import ClassVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from imagegen_common.errors import ImageGenError
from imagegen_common.models import ApiError, ErrorCode, ErrorResponse, FieldError

AWS_RETRY_AFTER_SECONDS = 5
"""Retry-After of a 503 when Step Functions or SQS is throttling us or failing."""

# Error codes that AWS services answer when they are throttling or in trouble, rather than when
# our request or our permissions are wrong (those are our bug: 500).
_AWS_THROTTLING_OR_SERVICE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalServerException",
        "ServiceException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_AWS_UNREACHABLE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)


class ApiRefusal(ImageGenError):
    """A request the API answers with an error: HTTP status, ErrorCode, message, bad fields."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR
    http_status: ClassVar[HTTPStatus] = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(
        self,
        message: str,
        fields: Sequence[FieldError] = (),
        retry_after_seconds: int | None = None,
    ) -> None:
        super().__init__(message)
        self.fields = list(fields)
        self.retry_after_seconds = retry_after_seconds

    def response_body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ApiError(code=self.code, message=self.message, fields=self.fields or None)
        )


class MalformedBodyError(ApiRefusal):
    """The body is not JSON we read: bad syntax, nested too deep, a number too long (400)."""

    code = ErrorCode.VALIDATION_ERROR
    http_status = HTTPStatus.BAD_REQUEST

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(
            f"the body is not a readable JSON document: {message}",
            [FieldError(field="body", in_="body", rule=rule, message=message)],
        )


class InvalidRequestError(ApiRefusal):
    """Well-formed JSON that breaks a rule of the request's model or the deployment (422)."""

    code = ErrorCode.VALIDATION_ERROR
    http_status = HTTPStatus.UNPROCESSABLE_ENTITY

    def __init__(self, fields: Sequence[FieldError], message: str | None = None) -> None:
        names = ", ".join(dict.fromkeys(field.field for field in fields))
        super().__init__(message or f"invalid request: {names}", fields)


class PayloadTooLargeError(ApiRefusal):
    """The body is larger than the route reads (413); nothing of it is parsed."""

    code = ErrorCode.PAYLOAD_TOO_LARGE
    http_status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    def __init__(self, size: int, limit: int) -> None:
        message = f"the body is {size} bytes; at most {limit} are read"
        super().__init__(
            message, [FieldError(field="body", in_="body", rule="max_bytes", message=message)]
        )


class UnsupportedMediaTypeError(ApiRefusal):
    """The body is sent as a media type the route does not read (415)."""

    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE
    http_status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE

    def __init__(self, media_type: str, accepted: str) -> None:
        message = f"Content-Type {media_type} is not accepted; send {accepted}"
        super().__init__(
            message,
            [FieldError(field="Content-Type", in_="header", rule="media_type", message=message)],
        )


class AwsServiceUnavailableError(ApiRefusal):
    """An AWS service we depend on throttles us or fails; the client should retry later (503)."""

    code = ErrorCode.SERVICE_UNAVAILABLE
    http_status = HTTPStatus.SERVICE_UNAVAILABLE


def refusal_for_aws_error(error: ClientError | BotoCoreError) -> ApiRefusal | None:
    """503 for throttling, an AWS 5xx or an unreachable endpoint; None for anything else."""
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        operation = error.operation_name or "an AWS call"
        if code in _AWS_THROTTLING_OR_SERVICE_CODES or status == 429 or status >= 500:
            return AwsServiceUnavailableError(
                f"the service is busy ({operation}: {code or status}); retry later",
                retry_after_seconds=AWS_RETRY_AFTER_SECONDS,
            )
        return None
    if isinstance(error, _AWS_UNREACHABLE):
        return AwsServiceUnavailableError(
            "a service the API depends on did not answer; retry later",
            retry_after_seconds=AWS_RETRY_AFTER_SECONDS,
        )
    return None
