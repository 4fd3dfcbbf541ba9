"""What the playground needs from the API and the local stack: CORS, /docs, the page's files.

The API's answers are the function's own (ApiFunction against moto, as in test_api.py); the
page's files come from the local API Gateway stand-in without a running server.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from imagegen.local.api_gateway import LocalApiGateway
from imagegen.local.deploy import ApiRoute, DeployedStack
from imagegen.local.lambda_runtime import LambdaRuntime
from imagegen.local.static_site import StaticSite
from imagegen_common.settings import ApiSettings
from tests.conftest import REPO_ROOT, import_function, load_event

PAGE_ORIGIN = "https://play.example.com"
OTHER_ORIGIN = "http://127.0.0.1:8080"
PASS_DEFINITION = json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}})


class Context:
    function_name = "ApiFunction"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ApiFunction"
    aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 28_000


Call = Callable[..., dict[str, Any]]


def api_calls(monkeypatch: pytest.MonkeyPatch, origins: str) -> Iterator[Call]:
    with mock_aws():
        machine = boto3.client("stepfunctions").create_state_machine(
            name="imagegen-test",
            definition=PASS_DEFINITION,
            roleArn="arn:aws:iam::123456789012:role/sfn",
        )
        boto3.client("s3").create_bucket(Bucket="images")
        monkeypatch.setenv("STATE_MACHINE_ARN", machine["stateMachineArn"])
        monkeypatch.setenv("IMAGES_BUCKET", "images")
        monkeypatch.setenv("JOBS_TABLE_NAME", "jobs")
        monkeypatch.setenv("CORS_ALLOWED_ORIGINS", origins)
        api = import_function("api")

        def call(
            method: str,
            path: str,
            resource: str,
            headers: dict[str, str] | None = None,
            query: dict[str, str] | None = None,
            stage_path: bool = True,
        ) -> dict[str, Any]:
            event = copy.deepcopy(load_event("api_get_generate.json"))
            headers = {"Host": "abc123.execute-api.us-east-1.amazonaws.com", **(headers or {})}
            event.update(
                httpMethod=method,
                path=path,
                resource=resource,
                pathParameters=None,
                headers=headers,
                multiValueHeaders={name: [value] for name, value in headers.items()},
                queryStringParameters=query,
                multiValueQueryStringParameters=(
                    {name: [value] for name, value in query.items()} if query else None
                ),
            )
            context = event["requestContext"]
            context.update(
                httpMethod=method,
                resourcePath=resource,
                stage="v1",
                path=f"/v1{path}" if stage_path else path,
            )
            response: dict[str, Any] = api.lambda_handler(event, Context())
            return response

        yield call


@pytest.fixture
def with_cors(monkeypatch: pytest.MonkeyPatch) -> Iterator[Call]:
    yield from api_calls(monkeypatch, f"{PAGE_ORIGIN}/, {OTHER_ORIGIN}")


@pytest.fixture
def without_cors(monkeypatch: pytest.MonkeyPatch) -> Iterator[Call]:
    yield from api_calls(monkeypatch, "")


def headers_of(response: dict[str, Any]) -> dict[str, str]:
    single = dict(response.get("headers") or {})
    for name, values in (response.get("multiValueHeaders") or {}).items():
        single[name] = ",".join(values)
    return single


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key,prefer,idempotency-key",
    }


# --- CORS ----------------------------------------------------------------------------------


def test_settings_split_the_origins_and_drop_a_trailing_slash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", " https://a.example/ ,http://127.0.0.1:8080")
    settings = ApiSettings(state_machine_arn="arn", images_bucket="b", jobs_table_name="jobs")
    assert settings.cors_allowed_origins == ["https://a.example", "http://127.0.0.1:8080"]


@pytest.mark.parametrize("origin", [PAGE_ORIGIN, OTHER_ORIGIN])
def test_a_configured_origin_passes_the_preflight(with_cors: Call, origin: str) -> None:
    response = with_cors("OPTIONS", "/generate", "/generate", preflight(origin))

    headers = headers_of(response)
    assert response["statusCode"] == 204
    assert headers["Access-Control-Allow-Origin"] == origin
    allowed = {name.strip().lower() for name in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-api-key", "prefer", "idempotency-key"} <= allowed
    assert {"POST", "GET", "DELETE"} <= set(headers["Access-Control-Allow-Methods"].split(","))
    exposed = headers["Access-Control-Expose-Headers"].split(",")
    assert {"Preference-Applied", "Retry-After"} <= set(exposed)


def test_another_origin_gets_no_cors_header(with_cors: Call) -> None:
    preflight_answer = with_cors(
        "OPTIONS", "/generate", "/generate", preflight("https://evil.example")
    )
    answer = with_cors(
        "GET",
        "/generate/nope",
        "/generate/{execution_id}",
        {"Origin": "https://evil.example"},
    )

    assert not any(name.startswith("Access-Control-Allow-Origin") for name in headers_of(answer))
    assert "Access-Control-Allow-Origin" not in headers_of(preflight_answer)


def test_errors_carry_the_cors_headers_so_the_page_can_read_them(with_cors: Call) -> None:
    response = with_cors(
        "GET", "/generate/nope", "/generate/{execution_id}", {"Origin": PAGE_ORIGIN}
    )

    assert response["statusCode"] == 404
    assert headers_of(response)["Access-Control-Allow-Origin"] == PAGE_ORIGIN
    assert json.loads(response["body"])["error"]["code"] == "NOT_FOUND"


def test_without_configured_origins_there_is_no_cors(without_cors: Call) -> None:
    response = without_cors("OPTIONS", "/generate", "/generate", preflight(PAGE_ORIGIN))

    assert not any(name.startswith("Access-Control") for name in headers_of(response))
    assert response["statusCode"] == 404


# --- /docs ---------------------------------------------------------------------------------


def test_docs_show_the_saved_document_with_the_stage_as_server(without_cors: Call) -> None:
    response = without_cors("GET", "/docs", "/docs", query={"format": "json"})

    served = json.loads(response["body"])
    saved = json.loads((REPO_ROOT / "docs" / "openapi.json").read_text())
    # The saved document's server is "/" (the API's root); on execute-api the stage is its root.
    assert served.pop("servers") == [{"url": "/v1"}]
    assert saved.pop("servers") == [{"url": "/"}]
    assert served == saved


def test_docs_on_a_custom_domain_or_locally_are_the_saved_document(without_cors: Call) -> None:
    response = without_cors("GET", "/docs", "/docs", query={"format": "json"}, stage_path=False)

    saved = json.loads((REPO_ROOT / "docs" / "openapi.json").read_text())
    assert json.loads(response["body"]) == saved


def test_docs_page_brings_its_own_swagger_ui(without_cors: Call) -> None:
    response = without_cors("GET", "/docs", "/docs")

    assert response["statusCode"] == 200
    assert headers_of(response)["Content-Type"].startswith("text/html")
    page = response["body"]
    assert "SwaggerUIBundle(" in page
    assert "<script src=" not in page and "<link rel='stylesheet'" not in page  # all inline
    assert '"/generate/{execution_id}"' in page


# --- The page's files, served by the local API ----------------------------------------------


@pytest.fixture
def gateway(tmp_path: Path) -> LocalApiGateway:
    stack = DeployedStack(
        stack_name="s",
        region="us-east-1",
        template_path=tmp_path / "template.yaml",
        resources={},
        outputs={},
        buckets={},
        queues={},
        event_buses={},
        state_machines={},
        functions={},
        routes=[ApiRoute("Api", "GET", "/generate/{execution_id}", "ApiFunction")],
        stages={},
    )
    return LocalApiGateway(
        stack, LambdaRuntime(), gateway_responses={}, static_root=REPO_ROOT / "web"
    )


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/config.js", "text/javascript; charset=utf-8"),
    ],
)
def test_the_local_api_serves_the_page(
    gateway: LocalApiGateway, path: str, content_type: str
) -> None:
    response = gateway.handle("GET", path, [], b"", "127.0.0.1")

    assert response.status == 200
    assert ("Content-Type", content_type) in response.headers
    name = path.lstrip("/") or "index.html"
    assert response.body == (REPO_ROOT / "web" / name).read_bytes()


@pytest.mark.parametrize(
    "path", ["/../template.yaml", "/%2e%2e/template.yaml", "/.hidden", "/nothing.js", "/web/"]
)
def test_nothing_else_is_served(gateway: LocalApiGateway, path: str) -> None:
    response = gateway.handle("GET", path, [], b"", "127.0.0.1")

    assert response.status == 403  # API Gateway's answer for a path without a route
    assert json.loads(response.body)["error"]["code"] == "FORBIDDEN"


def test_files_are_only_read(gateway: LocalApiGateway) -> None:
    response = gateway.handle("POST", "/index.html", [], b"{}", "127.0.0.1")
    assert response.status == 403


def test_the_api_routes_win_over_files(tmp_path: Path) -> None:
    (tmp_path / "openapi.json").write_text("{}")
    stack = DeployedStack(
        stack_name="s",
        region="us-east-1",
        template_path=tmp_path / "template.yaml",
        resources={},
        outputs={},
        buckets={},
        queues={},
        event_buses={},
        state_machines={},
        functions={},
        routes=[ApiRoute("Api", "GET", "/openapi.json", "ApiFunction")],
        stages={},
    )
    gateway = LocalApiGateway(stack, LambdaRuntime(), gateway_responses={}, static_root=tmp_path)
    assert StaticSite(tmp_path).find("/openapi.json") is not None

    with pytest.raises(KeyError, match="ApiFunction"):  # routed: the (absent) function is looked up
        gateway.prepare("GET", "/openapi.json", [], b"", "127.0.0.1")
