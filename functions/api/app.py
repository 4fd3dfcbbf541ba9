"""ApiFunction: POST and GET /generate, GET and DELETE /generate/{execution_id}, GET /openapi.json.

Routes are declared with pydantic models, so requests are validated and the OpenAPI document
comes from the same code. Every error, from any route or layer, is a typed exception mapped to a
response in one place below, in one shape: ``{"error": {"code", "message", "fields"?}}``
(:class:`ErrorResponse`), and the document declares each status a route can answer.
"""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Header, Path, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from api_docs import add_docs_route
from catalogue import model_catalogue
from cors import cors_config
from executions import (
    JobCancellation,
    cancel_job,
    execution_status,
    job_status,
    new_job_id,
    start_job,
)
from gpu_backlog import GpuBacklogFullError, check_gpu_backlog
from imagegen_common.aws import client
from imagegen_common.errors import InvalidPromptError
from imagegen_common.job_records import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    JobsTable,
    create_job,
    delete_job,
    jobs_table,
)
from imagegen_common.models import (
    ApiError,
    Backend,
    ErrorCode,
    ErrorResponse,
    ExecutionStatus,
    FieldError,
    GenerateAccepted,
    GenerateRequest,
    Job,
    JobPage,
    JobStatus,
    ModelCatalogue,
    Parameters,
    Stage,
)
from imagegen_common.settings import ApiSettings
from job_progress import check_webhook, job_page
from json_body import read_request
from prefer import MAX_WAIT_SECONDS, granted_wait, requested_wait, wait_for_end
from refusals import ApiRefusal, InvalidRequestError, refusal_for_aws_error

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

logger = Logger()
tracer = Tracer()
metrics = Metrics()
settings = ApiSettings()


# Clients are built by the first request that needs one, not at import: a cold start then pays
# only for what its route uses (reading a status never builds the SQS client).
@cache
def sfn() -> Any:
    return client("stepfunctions")


@cache
def s3() -> Any:
    return client("s3")


@cache
def sqs() -> Any:
    return client("sqs")


@cache
def jobs() -> JobsTable:
    return jobs_table(settings.jobs_table_name, settings.job_record_retention_days)


# powertools validates each route's path, query and headers; a route reads its body itself, by
# the body rules of ``json_body`` (``read_request``), and ``openapi_document`` declares it.
app = APIGatewayRestResolver(
    enable_validation=True, cors=cors_config(settings.cors_allowed_origins)
)
REQUEST_BODIES: dict[tuple[str, str], type[BaseModel]] = {("/generate", "post"): GenerateRequest}
"""The body model of each route that takes one, for the OpenAPI document."""

OPENAPI_TITLE = "imagegen"
OPENAPI_VERSION = "1.0.0"

ExecutionId = Annotated[str, Path(description="The execution_id returned by POST /generate.")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="idempotency-key",
        max_length=255,
        description="Retries with the same key return the same execution.",
    ),
]
StatusFilter = Annotated[ExecutionStatus | None, Query(description="Only jobs with this status.")]
PageSize = Annotated[
    int,
    Query(ge=1, le=MAX_PAGE_SIZE, description=f"Jobs per page, 1 to {MAX_PAGE_SIZE}."),
]
NextToken = Annotated[
    str | None,
    Query(max_length=2048, description="The next_token of the previous page."),
]
Prefer = Annotated[
    str | None,
    Header(
        alias="prefer",
        description=f"RFC 7240 preferences. `wait=N`: hold the answer up to N seconds (at most "
        f"{MAX_WAIT_SECONDS}) for the job to end, then answer 200 with the finished job, or 202 "
        "if it is still running. Other preferences, and a malformed wait, are ignored.",
    ),
]


# --- Errors: every one answered here, in the one shape -------------------------------------


def error_response(
    status: HTTPStatus, body: ErrorResponse, retry_after_seconds: int | None = None
) -> Response[dict[str, Any]]:
    headers = {"Retry-After": str(retry_after_seconds)} if retry_after_seconds else None
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=body.model_dump(mode="json", exclude_none=True),
        headers=headers,
    )


def _internal_error(error: BaseException) -> Response[dict[str, Any]]:
    logger.exception("unexpected error", exc_info=error)
    request_id = getattr(app.lambda_context, "aws_request_id", None) or "unknown"
    body = ErrorResponse(
        error=ApiError(
            code=ErrorCode.INTERNAL_ERROR,
            message=f"internal error; quote request id {request_id} when reporting it",
        )
    )
    return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, body)


@app.exception_handler(ApiRefusal)
def handle_refusal(error: ApiRefusal) -> Response[dict[str, Any]]:
    return error_response(error.http_status, error.response_body(), error.retry_after_seconds)


@app.exception_handler(RequestValidationError)
def handle_invalid_request(error: RequestValidationError) -> Response[dict[str, Any]]:
    problems = [(tuple(item.get("loc") or ("body",)), item) for item in error.errors()]
    if any(location[0] == "response" for location, _ in problems):
        # powertools reports a response that breaks its own model this way: our bug, not the
        # caller's.
        return _internal_error(error)
    fields = [
        FieldError(
            field=".".join(str(part) for part in location[1:]) or str(location[0]),
            in_=str(location[0]),
            rule=str(item.get("type", "invalid")),
            message=str(item.get("msg", "")),
        )
        for location, item in problems
    ]
    return handle_refusal(InvalidRequestError(fields))


@app.exception_handler(InvalidPromptError)
def handle_disallowed_value(error: InvalidPromptError) -> Response[dict[str, Any]]:
    # From resolve_request: a size or model this deployment or model does not allow. For the
    # API that is the request's shape (422 VALIDATION_ERROR); INVALID_PROMPT is a job's failure.
    field = FieldError(field=error.field or "body", rule="not_allowed", message=error.message)
    return handle_refusal(InvalidRequestError([field], message=error.message))


@app.exception_handler([ClientError, BotoCoreError])
def handle_aws_error(error: ClientError | BotoCoreError) -> Response[dict[str, Any]]:
    refusal = refusal_for_aws_error(error)
    if refusal is None:
        return _internal_error(error)
    logger.warning("AWS is throttling or failing", error=str(error))
    return handle_refusal(refusal)


@app.not_found
def handle_no_route(_: NotFoundError) -> Response[dict[str, Any]]:
    event = app.current_event
    body = ErrorResponse(
        error=ApiError(
            code=ErrorCode.NOT_FOUND, message=f"no route {event.http_method} {event.path}"
        )
    )
    return error_response(HTTPStatus.NOT_FOUND, body)


@app.exception_handler(Exception)
def handle_unexpected(error: Exception) -> Response[dict[str, Any]]:
    return _internal_error(error)


# --- Routes -----------------------------------------------------------------------------------

_ERROR_CONTENT: dict[str, Any] = {content_types.APPLICATION_JSON: {"model": ErrorResponse}}
_RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer"},
    }
}
_GATEWAY_ERRORS: dict[int, str] = {
    403: "API Gateway: the API key or signature is missing or invalid.",
    413: "API Gateway: the request is too large.",
    504: "API Gateway: the function did not answer in time.",
}


def declared_responses(
    success: "dict[int, str | OpenAPIResponse]", errors: dict[int, str]
) -> dict[int, Any]:
    """OpenAPI responses of a route: its success bodies and each error, all as ErrorResponse.

    A success given as a description gets the route's return model as its body.

    Besides the route's own errors, every route may get API Gateway's (403, 413, 429, 504),
    which the template's gateway responses render in the same shape, and 500 for a bug.
    """
    responses: dict[int, OpenAPIResponse] = {
        status: {"description": response} if isinstance(response, str) else response
        for status, response in success.items()
    }
    all_errors = {
        **_GATEWAY_ERRORS,
        429: "Throttled by API Gateway (the usage plan's rate or quota).",
        500: "An unexpected error; the message quotes the request id.",
        503: "Step Functions or SQS is throttling or failing; retry after Retry-After seconds.",
        **errors,
    }
    for status, description in sorted(all_errors.items()):
        response: OpenAPIResponse = {"description": description, "content": _ERROR_CONTENT}
        if status in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE):
            response["headers"] = _RETRY_AFTER
        responses[status] = response
    return responses


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


def check_backend_capacity(backend: Backend) -> None:
    """429 while the GPU queue holds GPU_MAX_BACKLOG waiting jobs (when a limit is set)."""
    if backend is not Backend.GPU or settings.gpu_max_backlog <= 0 or not settings.gpu_queue_url:
        return
    try:
        check_gpu_backlog(
            sqs(),
            settings.gpu_queue_url,
            settings.gpu_max_backlog,
            settings.gpu_backlog_retry_after_seconds,
        )
    except GpuBacklogFullError:
        metrics.add_metric(name="GpuBacklogRefusals", unit=MetricUnit.Count, value=1)
        raise


_PREFER_WAIT_HEADERS: dict[str, Any] = {
    "Preference-Applied": {
        "description": "`wait=N` when the server waited for the job's end: N is the wait "
        f"granted, the one asked for clamped to {MAX_WAIT_SECONDS} s and to the function's "
        "time left.",
        "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
    },
    "Vary": {
        "description": "`Prefer`: the answer depends on the wait preference.",
        "schema": {"type": "string"},
    },
}


@app.post(
    "/generate",
    summary="Submit a text-to-image job",
    description="The body must be a JSON object of at most 64 KB, sent as application/json, any "
    "*/*+json type or without Content-Type; nested at most 32 deep, no number longer than 50 "
    "characters, no key twice in an object.",
    responses=declared_responses(
        {
            200: {
                "description": "With `Prefer: wait=N`: the job ended within the wait. The body "
                "is what GET /generate/{execution_id} answers: its status, signed image URLs or "
                "error.",
                "headers": _PREFER_WAIT_HEADERS,
                "content": {content_types.APPLICATION_JSON: {"model": JobStatus}},
            },
            202: {
                "description": "Accepted: the workflow has started (or, for a repeated "
                "Idempotency-Key, had); with `Prefer: wait=N`, it had not ended within the wait.",
                "headers": _PREFER_WAIT_HEADERS,
                "content": {content_types.APPLICATION_JSON: {"model": GenerateAccepted}},
            },
        },
        {
            400: "The body is not readable JSON: rule json_invalid, json_depth, json_number or "
            "json_duplicate_key.",
            413: "The body is over 64 KB (rule max_bytes), or over API Gateway's 10 MB.",
            409: "The Idempotency-Key was already used with a different request.",
            415: "The Content-Type is not JSON; the field entry names what is accepted.",
            422: "The request breaks a rule: each bad field with the rule it broke.",
            429: "Throttled by API Gateway, or the GPU backlog is full (GPU_MAX_BACKLOG).",
        },
    ),
    tags=["jobs"],
)
@tracer.capture_method
def submit_generation(
    idempotency_key: IdempotencyKey = None, prefer: Prefer = None
) -> Response[GenerateAccepted | JobStatus]:
    # Imported by the first POST, not at cold start: the model adapters serve only this route.
    from imagegen_common.jobs import resolve_request

    request = read_request(GenerateRequest, app.current_event)
    resolved = resolve_request(request, settings)  # 422 now, not a failed job
    backend = resolved.backend
    if request.webhook is not None:
        check_webhook(str(request.webhook.url), settings.webhook_allow_loopback)
    check_backend_capacity(backend)
    owner = caller_identity()
    job = Job(
        job_id=new_job_id(owner, idempotency_key),
        owner=owner,
        submitted_at=datetime.now(UTC),
        request=request,
    )
    logger.append_keys(execution_id=job.job_id)
    # The record first, so progress events always find it; a retry of an Idempotency-Key finds
    # the first one and keeps it.
    parameters = Parameters.of(request, resolved.width, resolved.height, resolved.controls)
    created = create_job(jobs(), job, backend, resolved.model_id, parameters)
    try:
        start_job(sfn(), settings.state_machine_arn, job)
    except Exception:
        if created:  # never started: no job, so no record left RUNNING
            delete_job(jobs(), job.job_id)
        raise
    metrics.add_metric(name="JobsSubmitted", unit=MetricUnit.Count, value=1)
    headers = {"Vary": "Prefer"}
    wait_seconds = granted_wait(requested_wait(prefer), remaining_time_ms())
    if wait_seconds is not None:
        headers["Preference-Applied"] = f"wait={wait_seconds}"
        finished = finished_job(job, wait_seconds)
        if finished is not None:
            return Response(
                status_code=HTTPStatus.OK,
                content_type=content_types.APPLICATION_JSON,
                body=finished,
                headers=headers,
            )
    accepted = GenerateAccepted(execution_id=job.job_id, status_url=status_url(job.job_id))
    return Response(
        status_code=HTTPStatus.ACCEPTED,
        content_type=content_types.APPLICATION_JSON,
        body=accepted,
        headers=headers,
    )


def remaining_time_ms() -> int | None:
    context = app.lambda_context
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return int(remaining()) if remaining is not None else None


def finished_job(job: Job, wait_seconds: int) -> JobStatus | None:
    """The job's status once it has ended within ``wait_seconds``; None if it has not.

    The job is accepted by now: an AWS error while waiting or reading it gives None (a 202),
    never a 5xx.
    """

    def read_status() -> str:
        return execution_status(sfn(), settings.state_machine_arn, job.job_id)

    if not wait_for_end(read_status, wait_seconds):
        return None
    try:
        return job_status(
            sfn(),
            s3(),
            settings.state_machine_arn,
            job.job_id,
            job.owner,
            settings.presigned_url_ttl_seconds,
            jobs(),
        )
    except (ClientError, BotoCoreError) as error:
        logger.warning("the ended job could not be read; answering 202", error=str(error))
        return None


@app.get(
    "/generate/<execution_id>",
    summary="Read a job's status and images",
    responses=declared_responses(
        {200: "The job's status; on success with freshly signed image URLs."},
        {404: "No such job for this caller (other callers' jobs included)."},
    ),
    tags=["jobs"],
)
@tracer.capture_method
def read_generation(execution_id: ExecutionId) -> JobStatus:
    return job_status(
        sfn(),
        s3(),
        settings.state_machine_arn,
        execution_id,
        caller_identity(),
        settings.presigned_url_ttl_seconds,
        jobs(),
    )


@app.get(
    "/generate",
    summary="List your jobs, newest first",
    description="The caller's own jobs (no image URLs: read a job for those), newest first, "
    "a page at a time. A page may hold fewer jobs than limit and still have a next_token; "
    "the last page has none.",
    responses=declared_responses(
        {200: "A page of the caller's jobs."},
        {
            422: "A query parameter breaks its rule (status, limit, or a next_token not handed to "
            "this caller)."
        },
    ),
    tags=["jobs"],
)
@tracer.capture_method
def list_generations(
    status: StatusFilter = None,
    limit: PageSize = DEFAULT_PAGE_SIZE,
    next_token: NextToken = None,
) -> JobPage:
    return job_page(jobs(), caller_identity(), status, limit, next_token)


@app.get(
    "/models",
    summary="What this deployment offers",
    description="Each backend with its models, the sizes it takes and the defaults, from the "
    "deployment's own settings: what a client builds its form from.",
    responses=declared_responses({200: "The deployment's backends and models."}, {}),
    tags=["models"],
)
@tracer.capture_method
def describe_models() -> ModelCatalogue:
    return model_catalogue(settings)


@app.delete(
    "/generate/<execution_id>",
    summary="Cancel a running job",
    description="Stops the job's execution. The answer gives the status read after the stop: "
    "ABORTED, or CANCELLING while the stop is being applied. The 'Image Generation Cancelled' "
    "event follows from the execution itself, once, however often DELETE is called.",
    responses=declared_responses(
        {202: "The stop was requested; the body has the status read right after it."},
        {
            404: "No such job for this caller (other callers' jobs included).",
            409: "The job has already ended (the message names its status): nothing to cancel.",
        },
    ),
    tags=["jobs"],
)
@tracer.capture_method
def cancel_generation(execution_id: ExecutionId) -> Response[JobCancellation]:
    cancellation = cancel_job(sfn(), settings.state_machine_arn, execution_id, caller_identity())
    metrics.add_metric(name="JobsCancelled", unit=MetricUnit.Count, value=1)
    return Response(
        status_code=HTTPStatus.ACCEPTED,
        content_type=content_types.APPLICATION_JSON,
        body=cancellation,
    )


# --- OpenAPI ----------------------------------------------------------------------------------


@cache
def openapi_document() -> str:
    """The API's OpenAPI document, as served at /openapi.json and saved in docs/openapi.json."""
    from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn

    schema = app.get_openapi_json_schema(
        title=OPENAPI_TITLE,
        version=OPENAPI_VERSION,
        description="Submit text-to-image jobs and read their results. Every error, from the "
        "function or from API Gateway, is an ErrorResponse: "
        '{"error": {"code", "message", "fields"?}}.',
        security_schemes={"apiKey": APIKey(name="x-api-key", in_=APIKeyIn.header)},
        security=[{"apiKey": []}],
    )
    document = _with_stage_labels(_with_request_bodies(json.loads(schema)))
    return json.dumps(_without_undeclared_responses(document), indent=2)


def _with_stage_labels(document: dict[str, Any]) -> dict[str, Any]:
    """Each stage's words (``STAGE_LABELS``) beside the enum, as ``x-enum-descriptions`` (the
    OpenAPI generators' convention): clients such as the playground show them."""
    from imagegen_common.models import STAGE_LABELS

    stage = document["components"]["schemas"]["Stage"]
    stage["x-enum-descriptions"] = [STAGE_LABELS[Stage(value)] for value in stage["enum"]]
    return document


def _with_request_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """Declare each route's body (``REQUEST_BODIES``), which the route reads itself, as
    powertools would declare a body parameter: the model's schema under components."""
    from pydantic.json_schema import models_json_schema

    models = sorted(set(REQUEST_BODIES.values()), key=lambda model: model.__name__)
    references, definitions = models_json_schema(
        [(model, "validation") for model in models],
        ref_template="#/components/schemas/{model}",
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in definitions.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    for (path, method), model in REQUEST_BODIES.items():
        document["paths"][path][method]["requestBody"] = {
            "content": {
                content_types.APPLICATION_JSON: {"schema": references[(model, "validation")]}
            },
            "required": True,
        }
    return document


def _without_undeclared_responses(document: dict[str, Any]) -> dict[str, Any]:
    """Drop what powertools adds on its own and the API never answers.

    powertools declares a 422 with its ``HTTPValidationError`` schema on every route; the routes
    that can answer 422 declare it with ErrorResponse instead, so what is left of powertools'
    (on routes without a body) and the schemas only it used go.
    """
    for operations in document["paths"].values():
        for operation in operations.values():
            operation["responses"] = {
                status: response
                for status, response in sorted(operation["responses"].items())
                if "HTTPValidationError" not in json.dumps(response)
            }
    schemas = document["components"]["schemas"]
    used: set[str] = set()
    pending = list(_references(document["paths"]))
    while pending:
        name = pending.pop()
        if name not in used and name in schemas:
            used.add(name)
            pending.extend(_references(schemas[name]))
    document["components"]["schemas"] = {name: schemas[name] for name in schemas if name in used}
    return document


def _references(node: Any) -> Iterator[str]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            reference = item.get("$ref")
            if isinstance(reference, str):
                yield reference.rsplit("/", 1)[-1]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# GET /docs: Swagger UI over the same document, with its assets from the package (offline).
add_docs_route(app, openapi_document)


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
    try:
        return app.resolve(event, context)
    except Exception:  # outside any route (e.g. an event without httpMethod): still no 502
        logger.exception("the event could not be resolved")
        body = ErrorResponse(
            error=ApiError(
                code=ErrorCode.INTERNAL_ERROR,
                message=f"internal error; quote request id {context.aws_request_id} when "
                "reporting it",
            )
        )
        return {
            "statusCode": HTTPStatus.INTERNAL_SERVER_ERROR.value,
            "headers": {"Content-Type": content_types.APPLICATION_JSON},
            "body": body.model_dump_json(exclude_none=True),
            "isBase64Encoded": False,
        }
