"""A local stand-in for API Gateway's REST API: HTTP requests in, proxy events to our function.

moto does not invoke ``aws_proxy`` integrations over its own API Gateway URL, so this server
matches the template's routes (``DeployedStack.routes``), builds the REST (v1) Lambda proxy
event API Gateway would send, runs the function through the stack's Lambda runtime and writes
its response back. Like ``sam local start-api`` it does not enforce API keys; a given
``x-api-key`` shows up in ``requestContext.identity`` as it would on AWS.

It keeps API Gateway's limits and answers: a body over 10 MB is refused with 413 (from its
Content-Length, before reading it, or as soon as a chunked body passes the limit); the
integration times out after 29 s with 504 (counted from when the function's turn comes: the
local runtime caps a function's environments where Lambda would start more, and the wait for one
is that cap's, bounded by ``queue_timeout_s``); a path or method without a route gets 403 "Missing
Authentication Token" (unless it names a file of the playground, ``web/``, which this server
serves at ``/`` as a convenience of the local stack: ``static_site``); a failed function or a
malformed proxy response gets 502. These answers
are the API's gateway responses (``x-amazon-apigateway-gateway-responses`` in the RestApi's
body, as the template defines them), rendered as API Gateway renders them. A body that stops
arriving is answered 408 after ``body_timeout_s`` (on AWS the edge in front of API Gateway does
that; no gateway response applies).

The HTTP server is uvicorn (an ASGI app, in a background thread) with a large listen backlog;
each integration runs in a thread pool sized for a few hundred concurrent requests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from imagegen.local.deploy import ApiRoute, DeployedStack
from imagegen.local.lambda_runtime import DEFAULT_ACCOUNT_ID, FunctionSpec, LambdaRuntime
from imagegen.local.moto_server import PortInUseError, ensure_port_free
from imagegen.local.static_site import StaticSite
from imagegen_common.models import ApiError, ErrorCode, ErrorResponse

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 10 * 1024 * 1024
"""API Gateway's payload limit."""
INTEGRATION_TIMEOUT_S = 29.0
"""API Gateway's default integration timeout."""
BODY_TIMEOUT_S = 5.0
"""How long a request body may pause before the request is answered 408 and closed."""
QUEUE_TIMEOUT_S = 120.0
"""How long a request may wait in line for one of its function's local environments."""
LISTEN_BACKLOG = 2048
MAX_CONCURRENT_INTEGRATIONS = 256

_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


class GatewayResponseType(StrEnum):
    """The gateway response types (API Gateway's names) this server answers with."""

    MISSING_AUTHENTICATION_TOKEN = "MISSING_AUTHENTICATION_TOKEN"  # noqa: S105 (not a secret)
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
    INTEGRATION_TIMEOUT = "INTEGRATION_TIMEOUT"
    DEFAULT_4XX = "DEFAULT_4XX"
    DEFAULT_5XX = "DEFAULT_5XX"


# For each type: API Gateway's default status and message, and the code of the one error shape
# when the template defines neither the type nor a DEFAULT_4XX/DEFAULT_5XX.
_GATEWAY_ERRORS: dict[GatewayResponseType, tuple[int, str, ErrorCode]] = {
    GatewayResponseType.MISSING_AUTHENTICATION_TOKEN: (
        403,
        "Missing Authentication Token",
        ErrorCode.FORBIDDEN,
    ),
    GatewayResponseType.REQUEST_TOO_LARGE: (413, "Request Too Long", ErrorCode.PAYLOAD_TOO_LARGE),
    GatewayResponseType.INTEGRATION_TIMEOUT: (
        504,
        "Endpoint request timed out",
        ErrorCode.GATEWAY_TIMEOUT,
    ),
    GatewayResponseType.DEFAULT_4XX: (400, "Bad request", ErrorCode.VALIDATION_ERROR),
    GatewayResponseType.DEFAULT_5XX: (502, "Internal server error", ErrorCode.INTERNAL_ERROR),
}
_ERROR_TYPE_HEADERS = {
    GatewayResponseType.MISSING_AUTHENTICATION_TOKEN: "MissingAuthenticationTokenException"
}


# --- Routes and proxy events -----------------------------------------------------------------


@dataclass(frozen=True)
class RouteMatch:
    route: ApiRoute
    path_parameters: dict[str, str]


def _route_pattern(resource: str) -> re.Pattern[str]:
    parts = []
    for segment in resource.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith("+}"):
            parts.append(f"(?P<{_group(segment[1:-2])}>.+)")
        elif segment.startswith("{") and segment.endswith("}"):
            parts.append(f"(?P<{_group(segment[1:-1])}>[^/]+)")
        else:
            parts.append(re.escape(segment))
    return re.compile("^/" + "/".join(parts) + "/?$")


def _group(name: str) -> str:
    return "p_" + re.sub(r"\W", "_", name)


def match_route(routes: Sequence[ApiRoute], method: str, path: str) -> RouteMatch | None:
    """The route for ``method path``, literal segments winning over parameters, as on AWS."""
    candidates = []
    for route in routes:
        if route.method not in (method, "ANY"):
            continue
        found = _route_pattern(route.resource).match(path)
        if found:
            names = re.findall(r"\{([^}]+?)\+?\}", route.resource)
            values = {name: unquote(found.group(_group(name))) for name in names}
            literal = sum(1 for s in route.resource.split("/") if s and not s.startswith("{"))
            candidates.append((literal, route.method == method, RouteMatch(route, values)))
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[0], c[1]))[2]


def build_proxy_event(
    *,
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    match: RouteMatch,
    stage: str,
    api_id: str,
    source_ip: str = "127.0.0.1",
    request_id: str | None = None,
) -> dict[str, Any]:
    """The REST API (v1) Lambda proxy event API Gateway sends for this request."""
    single_headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        single_headers[name] = value
        multi_headers.setdefault(name, []).append(value)
    lower = {name.lower(): value for name, value in single_headers.items()}
    for name, value in (
        ("X-Forwarded-For", source_ip),
        ("X-Forwarded-Port", lower.get("host", ":80").rsplit(":", 1)[-1]),
        ("X-Forwarded-Proto", "http"),
    ):
        if name.lower() not in lower:
            single_headers[name] = value
            multi_headers[name] = [value]
    multi_query = parse_qs(query, keep_blank_values=True)
    api_key = lower.get("x-api-key")
    now = datetime.now(UTC)
    content_type = lower.get("content-type", "")
    is_text = not body or content_type.startswith(_TEXT_TYPES) or "json" in content_type
    encoded_body: str | None
    if not body:
        encoded_body = None
    elif is_text:
        encoded_body = body.decode("utf-8", errors="replace")
    else:
        encoded_body = base64.b64encode(body).decode()
    return {
        "resource": match.route.resource,
        "path": path,
        "httpMethod": method,
        "headers": single_headers or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": match.path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "accountId": DEFAULT_ACCOUNT_ID,
            "apiId": api_id,
            "resourceId": hashlib.sha256(match.route.resource.encode()).hexdigest()[:6],
            "resourcePath": match.route.resource,
            "httpMethod": method,
            "path": f"/{stage}{path}",
            "stage": stage,
            "requestId": request_id or str(uuid.uuid4()),
            "extendedRequestId": base64.b64encode(uuid.uuid4().bytes).decode()[:16],
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "protocol": "HTTP/1.1",
            "domainName": lower.get("host", "127.0.0.1"),
            "domainPrefix": lower.get("host", "127.0.0.1").split(".", 1)[0],
            "identity": {
                "sourceIp": source_ip,
                "userAgent": lower.get("user-agent"),
                "apiKey": api_key,
                # API Gateway gives the key's id, not its value: a stable id derived from it.
                "apiKeyId": (
                    "local" + hashlib.sha256(api_key.encode()).hexdigest()[:10] if api_key else None
                ),
                "accessKey": None,
                "accountId": None,
                "caller": None,
                "cognitoAuthenticationProvider": None,
                "cognitoAuthenticationType": None,
                "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None,
                "principalOrgId": None,
                "user": None,
                "userArn": None,
            },
            "authorizer": None,
        },
        "body": encoded_body,
        "isBase64Encoded": bool(body) and not is_text,
    }


# --- Responses ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class MalformedProxyResponse(ValueError):
    """A proxy integration's result that is not ``{"statusCode": int, ...}``."""


def proxy_response(result: Any) -> HttpResponse:
    """The HTTP response for a proxy integration's result; raises MalformedProxyResponse."""
    if not isinstance(result, Mapping) or not isinstance(result.get("statusCode"), int):
        raise MalformedProxyResponse(f"malformed Lambda proxy response: {result!r:.500}")
    headers: list[tuple[str, str]] = []
    multi = result.get("multiValueHeaders") or {}
    for name, values in multi.items():
        headers.extend((name, str(v)) for v in values)
    for name, value in (result.get("headers") or {}).items():
        if name not in multi:
            headers.append((name, str(value)))
    raw = result.get("body") or ""
    body = base64.b64decode(raw) if result.get("isBase64Encoded") else str(raw).encode()
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", "application/json"))
    return HttpResponse(int(result["statusCode"]), headers, body)


_CONTEXT_REFERENCE = re.compile(
    r"\$!?(?:\{(?P<braced>context(?:\.\w+)+)\}|(?P<bare>context(?:\.\w+)+))"
)


@dataclass(frozen=True)
class GatewayResponse:
    """One entry of ``x-amazon-apigateway-gateway-responses``: status, headers, templates."""

    status: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_definition(cls, definition: Mapping[str, Any]) -> GatewayResponse:
        status = definition.get("statusCode")
        return cls(
            status=int(status) if status not in (None, "") else None,
            # A value the template computes (the CORS origin's Fn::If) is left out: the local
            # stack does not resolve intrinsic functions in the API's body.
            parameters={
                str(k): v
                for k, v in (definition.get("responseParameters") or {}).items()
                if isinstance(v, str)
            },
            templates={
                str(k): str(v) for k, v in (definition.get("responseTemplates") or {}).items()
            },
        )

    def render(
        self,
        status: int,
        context: Mapping[str, str],
        request_headers: Sequence[tuple[str, str]],
    ) -> HttpResponse:
        """The response, with ``$context.*`` references of the template filled in as VTL would."""
        template = self.templates.get("application/json")
        content_type = "application/json"
        if template is None and self.templates:
            content_type, template = next(iter(self.templates.items()))
        if template is None:  # API Gateway's own template
            template = '{"message":$context.error.messageString}'

        def value_of(found: re.Match[str]) -> str:
            name = found.group("braced") or found.group("bare")
            return context.get(name, found.group(0))  # an unknown reference stays as written

        body = _CONTEXT_REFERENCE.sub(value_of, template).encode()
        requested = {name.lower(): value for name, value in request_headers}
        headers: dict[str, str] = {}
        for target, source in self.parameters.items():
            prefix = "gatewayresponse.header."
            if not target.startswith(prefix):
                continue
            if len(source) >= 2 and source.startswith("'") and source.endswith("'"):
                headers[target[len(prefix) :]] = source[1:-1]
            elif source.startswith("method.request.header."):
                value = requested.get(source[len("method.request.header.") :].lower())
                if value is not None:
                    headers[target[len(prefix) :]] = value
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = content_type
        return HttpResponse(self.status or status, list(headers.items()), body)


def gateway_responses_from_body(body: Mapping[str, Any]) -> dict[str, GatewayResponse]:
    """The gateway responses an API definition (Swagger/OpenAPI body) declares, by type."""
    declared = body.get("x-amazon-apigateway-gateway-responses") or {}
    return {
        str(kind): GatewayResponse.from_definition(definition)
        for kind, definition in declared.items()
        if isinstance(definition, Mapping)
    }


def load_gateway_responses(
    template_path: Path, region: str = "us-east-1"
) -> dict[str, dict[str, GatewayResponse]]:
    """Each RestApi's gateway responses (API logical id -> type -> response), from the template.

    Read from the translated template, where SAM puts the RestApi's body (``DefinitionBody``
    and the ``GatewayResponses`` property alike), so they are the deployed API's.
    """
    from imagegen.local.deploy import translate_template

    cfn, _ = translate_template(template_path, region=region)
    responses: dict[str, dict[str, GatewayResponse]] = {}
    for logical_id, resource in (cfn.get("Resources") or {}).items():
        if resource.get("Type") == "AWS::ApiGateway::RestApi":
            body = (resource.get("Properties") or {}).get("Body")
            if isinstance(body, Mapping):
                responses[logical_id] = gateway_responses_from_body(body)
    return responses


# --- The gateway -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Integration:
    """A routed request, ready to be handed to its function."""

    spec: FunctionSpec
    event: dict[str, Any]
    api_id: str
    headers: Sequence[tuple[str, str]]

    @property
    def request_id(self) -> str:
        return str(self.event["requestContext"]["requestId"])


class LocalApiGateway:
    """Routes requests to the stack's functions (its REST APIs' routes) and answers as AWS does.

    ``gateway_responses`` (API logical id -> type -> response) defaults to what the stack's
    template declares; ``static_root`` (the files a GET that matches no route may get) to the
    ``web/`` folder beside the template, when there is one.
    """

    def __init__(
        self,
        stack: DeployedStack,
        runtime: LambdaRuntime,
        gateway_responses: Mapping[str, Mapping[str, GatewayResponse]] | None = None,
        static_root: Path | None = None,
    ) -> None:
        self.stack = stack
        self.runtime = runtime
        if static_root is None and (stack.template_path.parent / "web").is_dir():
            static_root = stack.template_path.parent / "web"
        self.static_site = StaticSite(static_root) if static_root is not None else None
        self.routes = stack.routes
        if gateway_responses is None:
            gateway_responses = load_gateway_responses(stack.template_path, stack.region)
        self.gateway_responses = {api: dict(kinds) for api, kinds in gateway_responses.items()}
        # Requests that match no route belong to no API: the first API's responses answer them.
        self.default_api = next(
            iter([route.api_logical_id for route in self.routes] + list(self.gateway_responses)),
            "",
        )

    def prepare(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        source_ip: str,
    ) -> Integration | HttpResponse:
        """The integration for this request, or the gateway's answer when no route matches."""
        url = urlsplit(target)
        path = unquote(url.path) or "/"
        match = match_route(self.routes, method, path)
        if match is None:
            static = self._static_file(method, path)
            if static is not None:
                return static
            return self.error(GatewayResponseType.MISSING_AUTHENTICATION_TOKEN, headers=headers)
        api_id = match.route.api_logical_id
        event = build_proxy_event(
            method=method,
            path=path,
            query=url.query,
            headers=headers,
            body=body,
            match=match,
            stage=self.stack.stages.get(api_id, "Prod"),
            api_id=self.stack.resources.get(api_id, ("", "local"))[1],
            source_ip=source_ip,
        )
        spec = self.stack.functions[match.route.function_logical_id].spec
        return Integration(spec, event, api_id, headers)

    def _static_file(self, method: str, path: str) -> HttpResponse | None:
        if self.static_site is None or method not in ("GET", "HEAD"):
            return None
        found = self.static_site.find(path)
        if found is None:
            return None
        headers = [
            ("Content-Type", found.content_type),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
        ]
        return HttpResponse(200, headers, b"" if method == "HEAD" else found.body)

    def integrate(
        self, integration: Integration, served: Callable[[], None] | None = None
    ) -> HttpResponse:
        """Invoke the function (blocking) and turn its result into the HTTP response.

        ``served``: called when the invocation's turn for an environment comes
        (``LambdaRuntime.invoke``)."""
        spec = integration.spec
        try:
            result = self.runtime.invoke(spec, integration.event, integration.request_id, served)
            response = proxy_response(result)
        except Exception as error:
            context = integration.event["requestContext"]
            logger.warning(
                "%s failed on %s %s: %s: %s",
                spec.logical_id,
                context["httpMethod"],
                context["resourcePath"],
                type(error).__name__,
                error,
            )
            return self.error(
                GatewayResponseType.DEFAULT_5XX,
                api_id=integration.api_id,
                headers=integration.headers,
                request_id=integration.request_id,
            )
        return _with_request_id(response, integration.request_id)

    def handle(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        source_ip: str,
    ) -> HttpResponse:
        """One request, start to end, without the server's limits (for tests and tools)."""
        prepared = self.prepare(method, target, headers, body, source_ip)
        if isinstance(prepared, HttpResponse):
            return prepared
        return self.integrate(prepared)

    def error(
        self,
        response_type: GatewayResponseType,
        *,
        api_id: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        request_id: str | None = None,
    ) -> HttpResponse:
        """API Gateway's own answer of ``response_type``, as the API's gateway responses say.

        The type's own response, else the API's DEFAULT_4XX/DEFAULT_5XX, else the one error
        shape ``{"error": {"code", "message"}}``; the status is the type's unless the gateway
        response sets one.
        """
        status, message, code = _GATEWAY_ERRORS[response_type]
        request_id = request_id or str(uuid.uuid4())
        declared = self.gateway_responses.get(api_id or self.default_api) or {}
        fallback_type = (
            GatewayResponseType.DEFAULT_4XX if status < 500 else GatewayResponseType.DEFAULT_5XX
        )
        gateway_response = declared.get(response_type) or declared.get(fallback_type)
        if gateway_response is None:
            body = ErrorResponse(error=ApiError(code=code, message=message))
            response = HttpResponse(
                status,
                [("Content-Type", "application/json")],
                body.model_dump_json(exclude_none=True).encode(),
            )
        else:
            context = {
                "context.error.message": message,
                "context.error.messageString": json.dumps(message),
                "context.error.responseType": response_type,
                "context.error.validationErrorString": "",
                "context.requestId": request_id,
                "context.extendedRequestId": request_id,
                "context.apiId": self.stack.resources.get(api_id or "", ("", "local"))[1],
                "context.stage": self.stack.stages.get(api_id or "", "Prod"),
            }
            response = gateway_response.render(status, context, headers)
        if response_type in _ERROR_TYPE_HEADERS:
            response.headers.append(("x-amzn-ErrorType", _ERROR_TYPE_HEADERS[response_type]))
        return _with_request_id(response, request_id)


def _with_request_id(response: HttpResponse, request_id: str) -> HttpResponse:
    response.headers.append(("x-amzn-RequestId", request_id))
    return response


# --- The HTTP server ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiLimits:
    """API Gateway's limits, shortened in tests."""

    max_body_bytes: int = MAX_BODY_BYTES
    integration_timeout_s: float = INTEGRATION_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    queue_timeout_s: float = QUEUE_TIMEOUT_S


class _BodyTooLarge(Exception):
    pass


class _BodyTimedOut(Exception):
    pass


class _ClientGone(Exception):
    pass


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LocalApiApp:
    """The gateway as an ASGI application: limits, timeouts, and the integration in a thread."""

    def __init__(
        self,
        gateway: LocalApiGateway,
        *,
        limits: ApiLimits | None = None,
        executor: ThreadPoolExecutor | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.gateway = gateway
        self.limits = limits or ApiLimits()
        self.executor = executor or ThreadPoolExecutor(
            MAX_CONCURRENT_INTEGRATIONS, thread_name_prefix="local-api"
        )
        self.log = log or logger.info

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.monotonic()
        method = str(scope["method"])
        target = scope.get("raw_path", b"").decode("latin-1") or str(scope["path"])
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
        ]
        client = scope.get("client") or ("127.0.0.1", 0)
        try:
            response, complete = await self._respond(method, target, headers, receive, client[0])
        except _ClientGone:
            self.log(f"{method} {target} -> client disconnected")
            return
        except Exception:  # a defect here: answered as API Gateway answers its own failures
            logger.exception("the local API failed on %s %s", method, target)
            response, complete = self.gateway.error(GatewayResponseType.DEFAULT_5XX), False
        # A request whose body was not read to its end cannot be followed by another one on
        # the same connection: close it after the answer.
        extra = [] if complete else [("Connection", "close")]
        await _send_response(send, response, extra)
        self.log(f"{method} {target} -> {response.status} ({time.monotonic() - started:.2f} s)")

    async def _respond(
        self, method: str, target: str, headers: list[tuple[str, str]], receive: Receive, ip: str
    ) -> tuple[HttpResponse, bool]:
        declared = _content_length(headers)
        if declared is not None and declared > self.limits.max_body_bytes:
            return self.gateway.error(GatewayResponseType.REQUEST_TOO_LARGE, headers=headers), False
        try:
            body = await self._read_body(receive)
        except _BodyTooLarge:
            return self.gateway.error(GatewayResponseType.REQUEST_TOO_LARGE, headers=headers), False
        except _BodyTimedOut:
            message = f"the request body did not arrive within {self.limits.body_timeout_s:g} s"
            error = ErrorResponse(error=ApiError(code=ErrorCode.REQUEST_TIMEOUT, message=message))
            response = HttpResponse(
                408,
                [("Content-Type", "application/json")],
                error.model_dump_json(exclude_none=True).encode(),
            )
            return response, False
        prepared = self.gateway.prepare(method, target, headers, body, ip)
        if isinstance(prepared, HttpResponse):
            return prepared, True
        loop = asyncio.get_running_loop()
        served = asyncio.Event()

        def mark_served() -> None:  # from the integration's thread
            with contextlib.suppress(RuntimeError):  # the server stopped meanwhile
                loop.call_soon_threadsafe(served.set)

        work = loop.run_in_executor(self.executor, self.gateway.integrate, prepared, mark_served)
        in_line = asyncio.ensure_future(served.wait())
        waiting: set[asyncio.Future[Any]] = {work, in_line}
        try:
            await asyncio.wait(
                waiting,
                timeout=self.limits.queue_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            in_line.cancel()
        try:
            if not (served.is_set() or work.done()):
                raise TimeoutError
            # The function keeps running after a timeout, as a Lambda function does after
            # API Gateway has given up on it; its environment is busy until it ends.
            return await asyncio.wait_for(work, self.limits.integration_timeout_s), True
        except TimeoutError:
            logger.warning(
                "%s did not answer within %g s%s",
                prepared.spec.logical_id,
                self.limits.integration_timeout_s,
                "" if served.is_set() else " (it never had an environment's turn)",
            )
            response = self.gateway.error(
                GatewayResponseType.INTEGRATION_TIMEOUT,
                api_id=prepared.api_id,
                headers=headers,
                request_id=prepared.request_id,
            )
            return response, True

    async def _read_body(self, receive: Receive) -> bytes:
        body = bytearray()
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_timeout_s)
            except TimeoutError:
                raise _BodyTimedOut from None
            if message["type"] == "http.disconnect":
                raise _ClientGone
            body += message.get("body", b"")
            if len(body) > self.limits.max_body_bytes:
                raise _BodyTooLarge
            if not message.get("more_body", False):
                return bytes(body)


def _content_length(headers: Sequence[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_response(
    send: Send, response: HttpResponse, extra_headers: Sequence[tuple[str, str]]
) -> None:
    # The server frames the body itself: the function's framing headers do not apply.
    framing = {"content-length", "connection", "transfer-encoding"}
    headers = [(name, value) for name, value in response.headers if name.lower() not in framing]
    headers += [*extra_headers, ("Content-Length", str(len(response.body)))]
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": response.body})


class LocalApiServer:
    """``LocalApiGateway`` served over HTTP on ``host:port`` by uvicorn, in a background thread.

    ``port`` 0 takes a free port (``self.port`` says which).
    """

    def __init__(
        self,
        gateway: LocalApiGateway,
        port: int = 3000,
        host: str = "127.0.0.1",
        log: Callable[[str], None] | None = None,
        *,
        limits: ApiLimits | None = None,
        backlog: int = LISTEN_BACKLOG,
    ) -> None:
        import uvicorn

        if port:
            ensure_port_free(host, port, "the API")
        try:
            # Bound here, so a taken port fails now and connections queue from this moment.
            self._socket = socket.create_server((host, port), backlog=backlog)
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUseError(host, port, "the API") from error
            raise
        self.host = host
        self.port = int(self._socket.getsockname()[1])
        self._executor = ThreadPoolExecutor(
            MAX_CONCURRENT_INTEGRATIONS, thread_name_prefix="local-api"
        )
        app = LocalApiApp(gateway, limits=limits, executor=self._executor, log=log)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # the process's logging stays as it is
            access_log=False,  # `log` gets one line per request instead
            backlog=backlog,
            http="h11",
            ws="none",
            server_header=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=3,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="local-api",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> LocalApiServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the API server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
