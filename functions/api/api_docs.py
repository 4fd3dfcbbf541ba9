"""GET /docs: Swagger UI over the API's own OpenAPI document, with no asset from the network.

powertools' ``enable_swagger`` renders the document powertools generates, before our changes to
it (``openapi_document`` drops the 422s powertools declares and the API never answers), so this
route renders ``openapi_document`` itself, the one saved as docs/openapi.json, with powertools'
page and the Swagger UI script and style it ships (inlined, as ``enable_swagger`` does).

It is public (the template gives it no API key or IAM auth): a browser opening the link cannot
send a key header, and the document only describes the API. "Authorize" takes the key for
"Try it out".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from http import HTTPStatus
from pathlib import Path

import aws_lambda_powertools.event_handler.openapi.swagger_ui as swagger_ui
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.swagger_ui import generate_swagger_html

DOCS_PATH = "/docs"


@cache
def _swagger_assets() -> tuple[str, str]:
    folder = Path(swagger_ui.__file__).parent
    script = (folder / "swagger-ui-bundle.min.js").read_text(encoding="utf-8")
    style = (folder / "swagger-ui.min.css").read_text(encoding="utf-8")
    return script, style


def document_for_base_path(document: str, base_path: str) -> str:
    """The document with the one server its page is served under, so "Try it out" reaches it.

    On the execute-api domain the stage is part of every path (``/v1/generate``); on a custom
    domain or the local stack it is not. The saved document names no server: the base path
    depends on where it is read.
    """
    parsed = json.loads(document)
    parsed["servers"] = [{"url": base_path or "/"}]
    return json.dumps(parsed, indent=2)


def add_docs_route(
    app: APIGatewayRestResolver, document: Callable[[], str], path: str = DOCS_PATH
) -> None:
    """Serve Swagger UI at ``path`` (``?format=json``: the document it shows)."""

    @app.get(path, include_in_schema=False)
    def serve_docs() -> Response[str]:
        context = app.current_event.request_context
        stage = context.stage
        on_stage_path = bool(stage) and str(context.path or "").startswith(f"/{stage}/")
        served = document_for_base_path(document(), f"/{stage}" if on_stage_path else "")
        query = app.current_event.query_string_parameters or {}
        if query.get("format") == "json":
            return Response(
                status_code=HTTPStatus.OK, content_type=content_types.APPLICATION_JSON, body=served
            )
        script, style = _swagger_assets()
        # "</" inside the inlined document must not end its <script> element.
        page = generate_swagger_html(
            served.replace("</", "<\\/"),
            script,
            style,
            swagger_base_url="",
            oauth2_config=None,
            persist_authorization=True,
        )
        # A page that names no icon makes the browser ask for /favicon.ico, which has no route:
        # API Gateway answers 403 and the console shows an error on every visit.
        page = page.replace("<head>", '<head>\n    <link rel="icon" href="data:,">', 1)
        return Response(
            status_code=HTTPStatus.OK,
            content_type="text/html; charset=utf-8",
            body=page,
            headers={"Cache-Control": "no-cache"},
        )
