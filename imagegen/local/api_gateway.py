"""A local stand-in for API Gateway's REST API: HTTP requests in, proxy events to our function.

moto does not invoke ``aws_proxy`` integrations over its own API Gateway URL, so this server
matches the template's routes (``DeployedStack.routes``), builds the REST (v1) Lambda proxy
event API Gateway would send, runs the function in-process and writes its response back.
Like ``sam local start-api`` it does not enforce API keys; a given ``x-api-key`` shows up in
``requestContext.identity`` as it would on AWS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from imagegen.local.deploy import ApiRoute, DeployedStack
from imagegen.local.lambda_runtime import DEFAULT_ACCOUNT_ID, LambdaRuntime
from imagegen.local.moto_server import ensure_port_free

logger = logging.getLogger(__name__)

_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


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
    request_id = str(uuid.uuid4())
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
            "requestId": request_id,
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


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _gateway_error(status: HTTPStatus, message: str) -> HttpResponse:
    body = json.dumps({"message": message}).encode()
    return HttpResponse(
        int(status),
        [
            ("Content-Type", "application/json"),
            ("x-amzn-ErrorType", status.phrase.replace(" ", "")),
        ],
        body,
    )


def proxy_response(result: Any) -> HttpResponse:
    """The HTTP response for a proxy integration's result; 502 if it is malformed, as on AWS."""
    if not isinstance(result, Mapping) or not isinstance(result.get("statusCode"), int):
        logger.error("malformed Lambda proxy response: %r", result)
        return _gateway_error(HTTPStatus.BAD_GATEWAY, "Internal server error")
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


class LocalApiGateway:
    """Routes HTTP requests to the stack's functions (one REST API's routes)."""

    def __init__(self, stack: DeployedStack, runtime: LambdaRuntime) -> None:
        self.stack = stack
        self.runtime = runtime
        self.routes = stack.routes

    def handle(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        source_ip: str,
    ) -> HttpResponse:
        url = urlsplit(target)
        path = unquote(url.path) or "/"
        match = match_route(self.routes, method, path)
        if match is None:
            # What API Gateway answers for a path or method the API does not have.
            return _gateway_error(HTTPStatus.FORBIDDEN, "Missing Authentication Token")
        api_id = self.stack.resources.get(match.route.api_logical_id, ("", "local"))[1]
        event = build_proxy_event(
            method=method,
            path=path,
            query=url.query,
            headers=headers,
            body=body,
            match=match,
            stage=self.stack.stages.get(match.route.api_logical_id, "Prod"),
            api_id=api_id,
            source_ip=source_ip,
        )
        spec = self.stack.functions[match.route.function_logical_id].spec
        try:
            result = self.runtime.invoke(
                spec, event, request_id=event["requestContext"]["requestId"]
            )
        except Exception:
            logger.exception("%s failed on %s %s", spec.logical_id, method, path)
            return _gateway_error(HTTPStatus.BAD_GATEWAY, "Internal server error")
        return proxy_response(result)


def _handler_class(gateway: LocalApiGateway, log: Callable[[str], None]) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "imagegen-local-api"

        def _serve(self) -> None:
            started = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            response = gateway.handle(
                self.command, self.path, list(self.headers.items()), body, self.client_address[0]
            )
            self.send_response(response.status)
            for name, value in response.headers:
                if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
            log(
                f"{self.command} {self.path} -> {response.status} "
                f"({time.monotonic() - started:.2f} s)"
            )

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request comes from `log` above

    return Handler


class LocalApiServer:
    """``LocalApiGateway`` served over HTTP on ``host:port`` in a background thread."""

    def __init__(
        self,
        gateway: LocalApiGateway,
        port: int = 3000,
        host: str = "127.0.0.1",
        log: Callable[[str], None] | None = None,
    ) -> None:
        ensure_port_free(host, port, "the API")
        self.host = host
        self.port = port
        self._server = ThreadingHTTPServer(
            (host, port), _handler_class(gateway, log or logger.info)
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-api", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
