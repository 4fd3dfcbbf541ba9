"""A local stand-in for Amazon Bedrock: a real HTTP server on 127.0.0.1 that boto3 talks to.

Point an ordinary client at it with ``endpoint_url=fake.endpoint_url``, or set the standard
service-specific variables ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` and ``AWS_ENDPOINT_URL_BEDROCK``
(botocore builds the name from the service id: "Bedrock Runtime" -> ``BEDROCK_RUNTIME``).

It serves the models of ``imagegen_common.bedrock``'s registry (the one list of model ids, with
each model's name), answering with the pixel sizes the adapters' aspect-ratio table gives:
- bedrock-runtime ``POST /model/{modelId}/invoke`` (InvokeModel), answering Stability's real
  response format with real PNGs (a deterministic gradient from the seed) of the size the model
  returns;
- bedrock ``GET /foundation-models/{modelIdentifier}`` (GetFoundationModel) with
  ``modelDetails.modelLifecycle``: ACTIVE by default; :meth:`FakeBedrock.set_lifecycle` makes a
  model LEGACY, with its dates, to exercise ``imagegen models``.

Errors are AWS-style: the status code, ``x-amzn-ErrorType: <Code>:<namespace>`` (botocore's
rest-json parser keeps the part before ':') and ``{"message": ...}``, so botocore raises the
same ClientError as against AWS. Request bodies are checked against the documented fields and
limits (no unknown keys, text lengths, aspect ratio, seed range), so an adapter that sends what
Bedrock would refuse fails here too. Development tooling only: never deployed to Lambda.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import unquote

from imagegen_common.bedrock import ADAPTERS
from imagegen_common.bedrock.stability import (
    MAX_STABILITY_PROMPT_CHARS,
    MAX_STABILITY_SEED,
    OUTPUT_SIZES,
)

FailureKind = Literal[
    "throttle", "filter_prompt", "filter_output", "inference_error", "unavailable", "timeout"
]
FAILURE_KINDS: tuple[str, ...] = (
    "throttle",
    "filter_prompt",
    "filter_output",
    "inference_error",
    "unavailable",
    "timeout",
)

_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
_END_OF_LIFE = (
    "This model version has reached the end of its life. Please refer to the AWS "
    "documentation for more details."
)
_NO_ACCESS = "You don't have access to the model with the specified model ID."


class BedrockFault(Exception):
    """An AWS-style error answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Lifecycle:
    """``modelDetails.modelLifecycle`` of one model, as GetFoundationModel answers it."""

    status: str = "ACTIVE"
    legacy_time: datetime | None = None
    end_of_life_time: datetime | None = None

    def to_json(self) -> dict[str, str]:
        # The bedrock service model gives these timestamps timestampFormat iso8601.
        answer = {"status": self.status}
        if self.legacy_time is not None:
            answer["legacyTime"] = self.legacy_time.isoformat()
        if self.end_of_life_time is not None:
            answer["endOfLifeTime"] = self.end_of_life_time.isoformat()
        return answer


@dataclass
class InvokeCall:
    model_id: str
    body: Any


@dataclass
class _ScriptedFailure:
    kind: str
    remaining: int
    model_id: str | None


def make_png(width: int, height: int, seed: int) -> bytes:
    """A real RGB PNG: a diagonal gradient shifted by ``seed``; same seed, same bytes."""
    pattern = bytes((i * 7 + seed) & 0xFF for i in range(256)) + bytes(
        (i * 3 + (seed >> 8)) & 0xFF for i in range(256)
    )
    row_len = width * 3
    base = (pattern * (row_len // len(pattern) + 2))[: row_len + len(pattern)]
    raw = bytearray()
    for y in range(height):
        shift = (y + seed) % len(pattern)
        raw += b"\x00" + base[shift : shift + row_len]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw), 1))
        + chunk(b"IEND", b"")
    )


def make_image(width: int, height: int, seed: int, output_format: str = "png") -> bytes:
    """``make_png``'s picture in ``output_format`` (png, jpeg or webp), as the models answer."""
    png = make_png(width, height, seed)
    if output_format == "png":
        return png
    from PIL import Image  # the local stack's own dependency: only a jpeg answer needs it

    buffer = io.BytesIO()
    with Image.open(io.BytesIO(png)) as image:
        image.save(buffer, format=output_format.upper())
    return buffer.getvalue()


class FakeBedrock:
    """Bedrock runtime and control plane on ``http://127.0.0.1:<port>``; thread-safe."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        region: str = "us-east-1",
    ) -> None:
        self.host = host
        self.port = port
        self.region = region
        self.calls: list[InvokeCall] = []
        self.unavailable_models: set[str] = set()
        self.lifecycle: dict[str, Lifecycle] = {model_id: Lifecycle() for model_id in ADAPTERS}
        self._failures: list[_ScriptedFailure] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeBedrock is not started; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeBedrock:
        if self._server is not None:
            return self
        fake = self

        class Handler(_Handler):
            bedrock = fake

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-bedrock",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeBedrock:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- scripting ----------------------------------------------------------------------------

    def fail_next(
        self, kind: FailureKind | str, times: int = 1, model_id: str | None = None
    ) -> None:
        """Make the next ``times`` invocations (of ``model_id``, or of any model) fail."""
        if kind not in FAILURE_KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(FAILURE_KINDS)}")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        with self._lock:
            self._failures.append(_ScriptedFailure(kind, times, model_id))

    def set_lifecycle(
        self,
        model_id: str,
        status: str,
        *,
        legacy_time: datetime | None = None,
        end_of_life_time: datetime | None = None,
    ) -> None:
        """What GetFoundationModel answers for ``model_id`` from now on (e.g. LEGACY, dates)."""
        if model_id not in ADAPTERS:
            raise ValueError(f"{model_id!r} is not a model this stand-in serves")
        with self._lock:
            self.lifecycle[model_id] = Lifecycle(status, legacy_time, end_of_life_time)

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self._failures.clear()
            self.unavailable_models.clear()

    def _record_call(self, model_id: str, body: Any) -> str | None:
        with self._lock:
            self.calls.append(InvokeCall(model_id, body))
            for failure in self._failures:
                if failure.model_id in (None, model_id):
                    failure.remaining -= 1
                    if failure.remaining == 0:
                        self._failures.remove(failure)
                    return failure.kind
            return None

    # -- operations ---------------------------------------------------------------------------

    def invoke_model(self, model_id: str, raw_body: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw_body or b"null")
        except ValueError:
            body = None
        failure = self._record_call(model_id, body)
        if model_id not in ADAPTERS:
            raise BedrockFault(
                400, "ValidationException", "The provided model identifier is invalid."
            )
        with self._lock:
            unavailable = model_id in self.unavailable_models
        if unavailable:
            raise BedrockFault(403, "AccessDeniedException", _NO_ACCESS)
        if not isinstance(body, dict):
            raise BedrockFault(
                400, "ValidationException", "Malformed input request: body is not a JSON object"
            )
        if failure == "throttle":
            raise BedrockFault(
                429, "ThrottlingException", "Too many requests, please wait before trying again."
            )
        if failure == "unavailable":
            raise BedrockFault(404, "ResourceNotFoundException", _END_OF_LIFE)
        if failure == "timeout":
            raise BedrockFault(
                408,
                "ModelTimeoutException",
                "Model has timed out in processing the request. Try your request again.",
            )
        return _stability(body, failure)

    def get_foundation_model(self, model_id: str) -> dict[str, Any]:
        with self._lock:
            lifecycle = self.lifecycle.get(model_id)
        adapter = ADAPTERS.get(model_id)
        if adapter is None or lifecycle is None:
            raise BedrockFault(
                404, "ResourceNotFoundException", f"The model {model_id} does not exist."
            )
        return {
            "modelDetails": {
                "modelArn": f"arn:aws:bedrock:{self.region}::foundation-model/{model_id}",
                "modelId": model_id,
                "modelName": adapter.model_name,
                "providerName": adapter.provider,
                "inputModalities": ["TEXT"],
                "outputModalities": ["IMAGE"],
                "responseStreamingSupported": False,
                "customizationsSupported": [],
                "inferenceTypesSupported": ["ON_DEMAND"],
                "modelLifecycle": lifecycle.to_json(),
            }
        }


# -- Stability's request and response ------------------------------------------------------------


def _invalid(message: str) -> BedrockFault:
    return BedrockFault(400, "ValidationException", message)


def _check_seed(body: dict[str, Any], maximum: int, default: int) -> int:
    seed = body.get("seed", default)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= maximum:
        raise _invalid(f"seed: {seed!r} is not an integer between 0 and {maximum}")
    return seed


def _check_text(value: Any, name: str, maximum: int, *, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or len(value) > maximum or (required and not value):
        raise _invalid(f"{name}: expected a string of 1 to {maximum} characters")


def _effective_seed(seed: int) -> int:
    # Stability treats 0 as "pick one"; answer with a deterministic stand-in.
    return seed or 1234567


def _stability(body: dict[str, Any], failure: str | None) -> dict[str, Any]:
    allowed = {"prompt", "negative_prompt", "aspect_ratio", "seed", "output_format", "mode"}
    if unknown := set(body) - allowed:
        raise _invalid(f"extraneous key(s) {sorted(unknown)} are not permitted")
    _check_text(body.get("prompt"), "prompt", MAX_STABILITY_PROMPT_CHARS, required=True)
    _check_text(
        body.get("negative_prompt"), "negative_prompt", MAX_STABILITY_PROMPT_CHARS, required=False
    )
    ratio = body.get("aspect_ratio", "1:1")
    if ratio not in OUTPUT_SIZES:
        raise _invalid(f"aspect_ratio: must be one of {', '.join(OUTPUT_SIZES)}")
    output_format = body.get("output_format", "png")
    if output_format not in ("png", "jpeg"):
        raise _invalid("output_format: must be one of png, jpeg")
    if body.get("mode", "text-to-image") not in ("text-to-image", "image-to-image"):
        raise _invalid("mode: must be one of text-to-image, image-to-image")
    seed = _effective_seed(_check_seed(body, MAX_STABILITY_SEED, 0))
    if failure == "filter_prompt":
        return {"finish_reasons": ["Filter reason: prompt"]}
    if failure == "filter_output":
        return {"seeds": [seed], "finish_reasons": ["Filter reason: output image"], "images": []}
    if failure == "inference_error":
        return {"seeds": [seed], "finish_reasons": ["Inference error"], "images": []}
    width, height = OUTPUT_SIZES[ratio]
    image = base64.b64encode(make_image(width, height, seed, output_format)).decode()
    return {"seeds": [seed], "finish_reasons": [None], "images": [image]}


# -- HTTP --------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    bedrock: FakeBedrock
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``FakeBedrock.calls`` instead."""

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?", 1)[0]
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "model" and parts[3] == "invoke":
            self._answer(lambda: self.bedrock.invoke_model(unquote(parts[2]), raw))
        else:
            self._fault(
                BedrockFault(404, "UnknownOperationException", f"No operation at POST {path}")
            )

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        prefix = "/foundation-models/"
        if path.startswith(prefix) and len(path) > len(prefix):
            model_id = unquote(path[len(prefix) :])
            self._answer(lambda: self.bedrock.get_foundation_model(model_id))
        else:
            self._fault(
                BedrockFault(404, "UnknownOperationException", f"No operation at GET {path}")
            )

    def _answer(self, operation: Any) -> None:
        try:
            result = operation()
        except BedrockFault as fault:
            self._fault(fault)
            return
        self._send(200, json.dumps(result).encode(), {})

    def _fault(self, fault: BedrockFault) -> None:
        payload = json.dumps({"message": fault.message}).encode()
        self._send(fault.status, payload, {"x-amzn-ErrorType": f"{fault.code}:{_NAMESPACE}"})

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
