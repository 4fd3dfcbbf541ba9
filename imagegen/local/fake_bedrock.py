"""A local stand-in for Amazon Bedrock: a real HTTP server on 127.0.0.1 that boto3 talks to.

Point an ordinary client at it with ``endpoint_url=fake.endpoint_url``, or set the standard
service-specific variables ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` and ``AWS_ENDPOINT_URL_BEDROCK``
(botocore builds the name from the service id: "Bedrock Runtime" -> ``BEDROCK_RUNTIME``).

It serves:
- bedrock-runtime ``POST /model/{modelId}/invoke`` (InvokeModel), answering each family's real
  response format with real PNGs (a deterministic gradient from the seed) of the size the model
  returns;
- bedrock ``GET /foundation-models/{modelIdentifier}`` (GetFoundationModel) with
  ``modelDetails.modelLifecycle.status`` ACTIVE or LEGACY (legacy models LEGACY by default).

Errors are AWS-style: the status code, ``x-amzn-ErrorType: <Code>:<namespace>`` (botocore's
rest-json parser keeps the part before ':') and ``{"message": ...}``, so botocore raises the
same ClientError as against AWS. Request bodies are checked against each family's documented
limits here, independently of ``imagegen_common.bedrock``, so that tests cross-check the
adapters. Development tooling only: never deployed to Lambda.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import uuid
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import unquote

from imagegen_common.bedrock.stability import OUTPUT_SIZES

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

# What the real models return per aspect ratio: the stand-in answers like Bedrock does.
STABILITY_SIZES = OUTPUT_SIZES
STABILITY_MODELS = {
    "stability.stable-image-core-v1:1": "Stable Image Core 1.1",
    "stability.stable-image-ultra-v1:1": "Stable Image Ultra 1.1",
    "stability.sd3-5-large-v1:0": "Stable Diffusion 3.5 Large",
}
AMAZON_MODELS = {
    "amazon.titan-image-generator-v2:0": "Titan Image Generator G1 v2",
    "amazon.nova-canvas-v1:0": "Nova Canvas",
}
SDXL_MODELS = {"stability.stable-diffusion-xl-v1": "SDXL 1.0"}
MODEL_NAMES = {**STABILITY_MODELS, **AMAZON_MODELS, **SDXL_MODELS}
LEGACY_BY_DEFAULT = frozenset({*AMAZON_MODELS, *SDXL_MODELS})

_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
_END_OF_LIFE = (
    "This model version has reached the end of its life. Please refer to the AWS "
    "documentation for more details."
)
_NO_ACCESS = "You don't have access to the model with the specified model ID."
_FILTER_PROMPT_MESSAGE = (
    "This request has been blocked by our content filters. Please adjust your text prompt to "
    "submit a new request."
)
_FILTER_OUTPUT_MESSAGE = (
    "This request has been blocked by our content filters because the generated image(s) may "
    "conflict with our AUP or AWS Responsible AI Policy. Please try again."
)


class BedrockFault(Exception):
    """An AWS-style error answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


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


class FakeBedrock:
    """Bedrock runtime and control plane on ``http://127.0.0.1:<port>``; thread-safe."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        region: str = "us-east-1",
        lifecycle: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.region = region
        self.calls: list[InvokeCall] = []
        self.unavailable_models: set[str] = set()
        self.lifecycle: dict[str, str] = {
            model_id: "LEGACY" if model_id in LEGACY_BY_DEFAULT else "ACTIVE"
            for model_id in MODEL_NAMES
        }
        self.lifecycle.update(lifecycle or {})
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

    def set_lifecycle(self, model_id: str, status: str) -> None:
        with self._lock:
            self.lifecycle[model_id] = status

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
        if model_id not in MODEL_NAMES:
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
        if model_id in STABILITY_MODELS:
            return _stability(model_id, body, failure)
        if model_id in AMAZON_MODELS:
            return _amazon(model_id, body, failure)
        return _sdxl(body, failure)

    def get_foundation_model(self, model_id: str) -> dict[str, Any]:
        with self._lock:
            status = self.lifecycle.get(model_id)
        if model_id not in MODEL_NAMES or status is None:
            raise BedrockFault(
                404, "ResourceNotFoundException", f"The model {model_id} does not exist."
            )
        provider = "Amazon" if model_id.startswith("amazon.") else "Stability AI"
        return {
            "modelDetails": {
                "modelArn": f"arn:aws:bedrock:{self.region}::foundation-model/{model_id}",
                "modelId": model_id,
                "modelName": MODEL_NAMES[model_id],
                "providerName": provider,
                "inputModalities": ["TEXT"],
                "outputModalities": ["IMAGE"],
                "responseStreamingSupported": False,
                "customizationsSupported": [],
                "inferenceTypesSupported": ["ON_DEMAND"],
                "modelLifecycle": {"status": status},
            }
        }


# -- per family --------------------------------------------------------------------------------


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


def _stability(model_id: str, body: dict[str, Any], failure: str | None) -> dict[str, Any]:
    allowed = {"prompt", "negative_prompt", "aspect_ratio", "seed", "output_format", "mode"}
    if unknown := set(body) - allowed:
        raise _invalid(f"extraneous key(s) {sorted(unknown)} are not permitted")
    _check_text(body.get("prompt"), "prompt", 10_000, required=True)
    _check_text(body.get("negative_prompt"), "negative_prompt", 10_000, required=False)
    ratio = body.get("aspect_ratio", "1:1")
    if ratio not in STABILITY_SIZES:
        raise _invalid(f"aspect_ratio: must be one of {', '.join(STABILITY_SIZES)}")
    if body.get("output_format", "png") not in ("png", "jpeg"):
        raise _invalid("output_format: must be one of png, jpeg")
    if body.get("mode", "text-to-image") not in ("text-to-image", "image-to-image"):
        raise _invalid("mode: must be one of text-to-image, image-to-image")
    seed = _effective_seed(_check_seed(body, 4_294_967_294, 0))
    if failure == "filter_prompt":
        return {"finish_reasons": ["Filter reason: prompt"]}
    if failure == "filter_output":
        return {"seeds": [seed], "finish_reasons": ["Filter reason: output image"], "images": []}
    if failure == "inference_error":
        return {"seeds": [seed], "finish_reasons": ["Inference error"], "images": []}
    width, height = STABILITY_SIZES[ratio]
    image = base64.b64encode(make_png(width, height, seed)).decode()
    return {"seeds": [seed], "finish_reasons": [None], "images": [image]}


def _amazon(model_id: str, body: dict[str, Any], failure: str | None) -> dict[str, Any]:
    nova = model_id == "amazon.nova-canvas-v1:0"
    text_max = 1024 if nova else 512
    if body.get("taskType") != "TEXT_IMAGE":
        raise _invalid("taskType: only TEXT_IMAGE is served by this stand-in")
    params = body.get("textToImageParams")
    config = body.get("imageGenerationConfig", {})
    if not isinstance(params, dict) or not isinstance(config, dict):
        raise _invalid("textToImageParams and imageGenerationConfig must be objects")
    _check_text(params.get("text"), "text", text_max, required=True)
    _check_text(params.get("negativeText"), "negativeText", text_max, required=False)
    width, height = config.get("width", 1024), config.get("height", 1024)
    if not isinstance(width, int) or not isinstance(height, int):
        raise _invalid("width and height must be integers")
    if nova:
        ok = (
            all(320 <= side <= 4096 and side % 16 == 0 for side in (width, height))
            and max(width, height) <= 4 * min(width, height)
            and width * height < 4_194_304
        )
    else:
        ok = (width, height) in _TITAN_SIZES
    if not ok:
        raise _invalid(f"The provided image dimensions {width}x{height} are not supported.")
    if config.get("numberOfImages", 1) != 1:
        raise _invalid("numberOfImages: this stand-in makes one image per call")
    seed = _check_seed(config, 858_993_459 if nova else 2_147_483_646, 12 if nova else 42)
    if failure == "filter_prompt":
        raise _invalid(_FILTER_PROMPT_MESSAGE)
    if failure == "filter_output":
        raise _invalid(_FILTER_OUTPUT_MESSAGE)
    if failure == "inference_error":
        raise BedrockFault(
            424,
            "ModelErrorException",
            "The system encountered an unexpected error during processing. Try your request again.",
        )
    image = base64.b64encode(make_png(width, height, seed)).decode()
    return {"images": [image], "error": None}


_TITAN_SIZES = frozenset(
    {
        (1024, 1024), (768, 768), (512, 512), (768, 1152), (384, 576), (1152, 768), (576, 384),
        (768, 1280), (384, 640), (1280, 768), (640, 384), (896, 1152), (448, 576), (1152, 896),
        (576, 448), (768, 1408), (384, 704), (1408, 768), (704, 384), (640, 1408), (320, 704),
        (1408, 640), (704, 320), (1152, 640), (1173, 640),
    }
)  # fmt: skip
_SDXL_SIZES = frozenset(
    {
        (1024, 1024), (1152, 896), (1216, 832), (1344, 768), (1536, 640), (640, 1536),
        (768, 1344), (832, 1216), (896, 1152),
    }
)  # fmt: skip


def _sdxl(body: dict[str, Any], failure: str | None) -> dict[str, Any]:
    prompts = body.get("text_prompts")
    if not isinstance(prompts, list) or not prompts:
        raise _invalid("text_prompts: required, a non-empty list")
    for prompt in prompts:
        if not isinstance(prompt, dict):
            raise _invalid("text_prompts: each item must be an object")
        _check_text(prompt.get("text"), "text_prompts.text", 2000, required=True)
    width, height = body.get("width", 1024), body.get("height", 1024)
    if (width, height) not in _SDXL_SIZES:
        raise _invalid(f"invalid_height_or_width: {width}x{height} is not an SDXL 1.0 size")
    seed = _effective_seed(_check_seed(body, 4_294_967_295, 0))
    png = base64.b64encode(make_png(width, height, seed)).decode()
    if failure in ("filter_prompt", "filter_output"):
        artifact = {"seed": seed, "base64": png, "finishReason": "CONTENT_FILTERED"}
    elif failure == "inference_error":
        artifact = {"seed": seed, "base64": None, "finishReason": "ERROR"}
    else:
        artifact = {"seed": seed, "base64": png, "finishReason": "SUCCESS"}
    return {"result": "success", "artifacts": [artifact]}


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
