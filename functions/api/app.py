"""ApiFunction: POST /generate, GET and DELETE /generate/{execution_id}, GET /openapi.json.

Routes are declared with pydantic models, so requests are validated and the OpenAPI document
comes from the same code. Errors are typed exceptions, mapped to responses in one place below.
"""

from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn, SecurityScheme
from aws_lambda_powertools.event_handler.openapi.params import Header, Path
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from imagegen_common.aws import client
from imagegen_common.errors import InvalidPromptError
from imagegen_common.executions import (
    IdempotencyConflictError,
    JobNotFoundError,
    JobNotRunningError,
    cancel_job,
    job_status,
    new_job_id,
    start_job,
)
from imagegen_common.jobs import resolve_request
from imagegen_common.models import ErrorCode, GenerateAccepted, GenerateRequest, Job, JobStatus
from imagegen_common.settings import ApiSettings

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = ApiSettings()
sfn = client("stepfunctions")
s3 = client("s3")
events = client("events")

app = APIGatewayRestResolver(enable_validation=True)

OPENAPI_TITLE = "imagegen"
OPENAPI_VERSION = "1.0.0"
SECURITY_SCHEMES: dict[str, SecurityScheme] = {
    "apiKey": APIKey(name="x-api-key", in_=APIKeyIn.header)
}

ExecutionId = Annotated[str, Path(description="The execution_id returned by POST /generate.")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="idempotency-key",
        max_length=255,
        description="Retries with the same key return the same execution.",
    ),
]


def _error_body(
    code: ErrorCode | str, message: str, fields: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": str(code), "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def _json_response(status: HTTPStatus, body: dict[str, Any]) -> Response[dict[str, Any]]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body)


@app.exception_handler(RequestValidationError)
def handle_invalid_request(error: RequestValidationError) -> Response[dict[str, Any]]:
    fields = [
        {
            "field": ".".join(str(part) for part in item["loc"][1:]) or str(item["loc"][0]),
            "in": str(item["loc"][0]),
            "rule": str(item["type"]),
            "message": str(item.get("msg", "")),
        }
        for item in error.errors()
    ]
    names = ", ".join(field["field"] for field in fields)
    return _json_response(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        _error_body(ErrorCode.VALIDATION_ERROR, f"invalid request: {names}", fields),
    )


@app.exception_handler(InvalidPromptError)
def handle_invalid_prompt(error: InvalidPromptError) -> Response[dict[str, Any]]:
    fields = None
    if error.field:
        fields = [{"field": error.field, "rule": "allowed_values", "message": error.message}]
    return _json_response(
        HTTPStatus.UNPROCESSABLE_ENTITY, _error_body(error.code, error.message, fields)
    )


@app.exception_handler(JobNotFoundError)
def handle_not_found(error: JobNotFoundError) -> Response[dict[str, Any]]:
    return _json_response(HTTPStatus.NOT_FOUND, _error_body("NOT_FOUND", f"no job {error}"))


@app.exception_handler([IdempotencyConflictError, JobNotRunningError])
def handle_conflict(error: Exception) -> Response[dict[str, Any]]:
    return _json_response(HTTPStatus.CONFLICT, _error_body("CONFLICT", str(error)))


def caller_identity() -> str:
    """Who is calling, from the request context: the API key's id, else the IAM principal."""
    identity = app.current_event.request_context.identity
    if identity.api_key_id:
        return f"apikey:{identity.api_key_id}"
    if identity.user_arn:
        return f"iam:{identity.user_arn}"
    return "anonymous"


def status_url(execution_id: str) -> str:
    event = app.current_event
    host = event.headers.get("Host") or event.headers.get("host")
    path = f"/generate/{execution_id}"
    if not host:
        return path
    scheme = event.headers.get("X-Forwarded-Proto") or event.headers.get("x-forwarded-proto")
    # On the execute-api domain the stage is part of the path; on a custom domain it is not.
    stage = f"/{event.request_context.stage}" if host.endswith(".amazonaws.com") else ""
    return f"{scheme or 'https'}://{host}{stage}{path}"


@app.post(
    "/generate",
    summary="Submit a text-to-image job",
    responses={202: {"description": "Accepted: the workflow has started."}},
    tags=["jobs"],
)
@tracer.capture_method
def submit_generation(
    request: GenerateRequest, idempotency_key: IdempotencyKey = None
) -> Response[GenerateAccepted]:
    resolve_request(request, settings)  # 422 now rather than a failed execution later
    owner = caller_identity()
    job = Job(
        job_id=new_job_id(owner, idempotency_key),
        owner=owner,
        submitted_at=datetime.now(UTC),
        request=request,
    )
    logger.append_keys(execution_id=job.job_id)
    start_job(sfn, settings.state_machine_arn, job)
    metrics.add_metric(name="JobsSubmitted", unit=MetricUnit.Count, value=1)
    accepted = GenerateAccepted(execution_id=job.job_id, status_url=status_url(job.job_id))
    return Response(
        status_code=HTTPStatus.ACCEPTED,
        content_type=content_types.APPLICATION_JSON,
        body=accepted,
    )


@app.get("/generate/<execution_id>", summary="Read a job's status and images", tags=["jobs"])
@tracer.capture_method
def read_generation(execution_id: ExecutionId) -> JobStatus:
    return job_status(
        sfn,
        s3,
        settings.state_machine_arn,
        execution_id,
        caller_identity(),
        settings.presigned_url_ttl_seconds,
    )


@app.delete(
    "/generate/<execution_id>",
    summary="Cancel a running job",
    responses={202: {"description": "The job is being stopped."}},
    tags=["jobs"],
)
@tracer.capture_method
def cancel_generation(execution_id: ExecutionId) -> Response[JobStatus]:
    stopped = cancel_job(
        sfn,
        events,
        settings.state_machine_arn,
        execution_id,
        caller_identity(),
        settings.event_bus_name,
        settings.event_source,
    )
    metrics.add_metric(name="JobsCancelled", unit=MetricUnit.Count, value=1)
    return Response(
        status_code=HTTPStatus.ACCEPTED,
        content_type=content_types.APPLICATION_JSON,
        body=stopped,
    )


def openapi_document() -> str:
    return app.get_openapi_json_schema(
        title=OPENAPI_TITLE,
        version=OPENAPI_VERSION,
        description="Submit text-to-image jobs and read their results.",
        security_schemes=SECURITY_SCHEMES,
        security=[{"apiKey": []}],
    )


@app.get("/openapi.json", include_in_schema=False)
def serve_openapi() -> Response[str]:
    return Response(
        status_code=HTTPStatus.OK,
        content_type=content_types.APPLICATION_JSON,
        body=openapi_document(),
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
