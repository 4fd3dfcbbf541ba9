"""Adapters: documented request bodies, size rules, response parsing and error mapping."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from botocore.response import StreamingBody
from botocore.stub import Stubber

from imagegen.local.fake_bedrock import make_png
from imagegen_common.bedrock import (
    KNOWN_MODEL_IDS,
    LEGACY_MODEL_IDS,
    NOVA_CANVAS,
    SD35_LARGE,
    SDXL_1_0,
    STABLE_IMAGE_CORE,
    STABLE_IMAGE_ULTRA,
    TITAN_IMAGE_V2,
    adapter_for,
    error_from_client_error,
    generate_with_bedrock,
)
from imagegen_common.errors import (
    ContentFilteredError,
    ImageGenError,
    InvalidPromptError,
    ModelError,
    ModelThrottledError,
    ModelTransientError,
    ModelUnavailableError,
)

STABILITY_IDS = (STABLE_IMAGE_CORE, STABLE_IMAGE_ULTRA, SD35_LARGE)


def _b64_png(width: int, height: int, seed: int = 1) -> str:
    return base64.b64encode(make_png(width, height, seed)).decode()


# -- registry -------------------------------------------------------------------------------------


def test_unknown_model_id_is_invalid_prompt_naming_known_ids() -> None:
    with pytest.raises(InvalidPromptError) as info:
        adapter_for("stability.stable-diffusion-xl-v0")
    assert info.value.field == "model_id"
    for model_id in KNOWN_MODEL_IDS:
        assert model_id in info.value.message


def test_legacy_flags_and_images_per_call() -> None:
    assert {TITAN_IMAGE_V2, NOVA_CANVAS, SDXL_1_0} == LEGACY_MODEL_IDS
    for model_id in STABILITY_IDS:
        adapter = adapter_for(model_id)
        assert adapter.legacy is False
        assert adapter.images_per_call == 1
        assert adapter.family == "stability"
        assert model_id in adapter.model_ids


# -- Stability ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "ratio", "output"),
    [
        (1024, 1024, "1:1", (1024, 1024)),
        (512, 512, "1:1", (1024, 1024)),
        (768, 768, "1:1", (1024, 1024)),
        (1920, 1080, "16:9", (1344, 768)),
        (1344, 768, "16:9", (1344, 768)),  # the native 16:9 size, although 1344:768 is 7:4
        (768, 1344, "9:16", (768, 1344)),
        (1536, 640, "21:9", (1536, 640)),  # 12:5 by ratio, 21:9's native size
        (1680, 720, "21:9", (1536, 640)),
        (1200, 800, "3:2", (1216, 832)),
        (800, 1000, "4:5", (896, 1088)),
        (640, 1536, "9:21", (640, 1536)),
    ],
)
@pytest.mark.parametrize("model_id", STABILITY_IDS)
def test_stability_maps_size_to_aspect_ratio(
    model_id: str, width: int, height: int, ratio: str, output: tuple[int, int]
) -> None:
    adapter = adapter_for(model_id)
    adapter.check_request("a cat", None, width, height)
    assert adapter.output_size(width, height) == output
    body = adapter.build_body("a cat", None, width, height, seed=5)
    assert body["aspect_ratio"] == ratio


@pytest.mark.parametrize(("width", "height"), [(1000, 700), (1024, 768), (800, 600), (1152, 896)])
def test_stability_rejects_other_ratios_listing_allowed(width: int, height: int) -> None:
    adapter = adapter_for(STABLE_IMAGE_CORE)
    with pytest.raises(InvalidPromptError) as info:
        adapter.check_request("a cat", None, width, height)
    assert info.value.field == "width"
    message = info.value.message
    assert f"{width}x{height}" in message
    for ratio in ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21"):
        assert ratio in message
    assert "1344x768" in message


def test_stability_body_shape_core() -> None:
    body = adapter_for(STABLE_IMAGE_CORE).build_body("a cat", "dogs", 1024, 1024, seed=42)
    assert body == {
        "prompt": "a cat",
        "negative_prompt": "dogs",
        "aspect_ratio": "1:1",
        "seed": 42,
        "output_format": "png",
    }


def test_stability_body_omits_empty_negative_prompt_and_sd35_sends_mode() -> None:
    body = adapter_for(SD35_LARGE).build_body("a cat", "", 1344, 768, seed=0)
    assert body == {
        "prompt": "a cat",
        "aspect_ratio": "16:9",
        "seed": 0,
        "output_format": "png",
        "mode": "text-to-image",
    }
    assert "mode" not in adapter_for(STABLE_IMAGE_ULTRA).build_body("a", None, 512, 512, 1)


def test_stability_limits() -> None:
    adapter = adapter_for(STABLE_IMAGE_ULTRA)
    adapter.check_request("x" * 10_000, "y" * 10_000, 1024, 1024)
    with pytest.raises(InvalidPromptError) as info:
        adapter.check_request("x" * 10_001, None, 1024, 1024)
    assert info.value.field == "prompt"
    with pytest.raises(InvalidPromptError) as info:
        adapter.check_request("x", "y" * 10_001, 1024, 1024)
    assert info.value.field == "negative_prompt"
    adapter.build_body("x", None, 1024, 1024, seed=4_294_967_294)
    with pytest.raises(InvalidPromptError) as info:
        adapter.build_body("x", None, 1024, 1024, seed=4_294_967_295)
    assert info.value.field == "seed"
    assert "4294967294" in info.value.message


def test_stability_parses_image_seed_and_size() -> None:
    adapter = adapter_for(STABLE_IMAGE_CORE)
    image = adapter.parse_response(
        {"seeds": [2130420379], "finish_reasons": [None], "images": [_b64_png(1344, 768)]}
    )
    assert (image.width, image.height, image.seed) == (1344, 768, 2130420379)
    assert image.png.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"finish_reasons": ["Filter reason: prompt"]}, ContentFilteredError),
        (
            {"seeds": [1], "finish_reasons": ["Filter reason: output image"], "images": []},
            ContentFilteredError,
        ),
        ({"seeds": [1], "finish_reasons": ["Filter reason: input image"]}, ContentFilteredError),
        ({"seeds": [1], "finish_reasons": ["Inference error"], "images": []}, ModelError),
        ({"seeds": [1], "finish_reasons": ["Something new"], "images": []}, ModelError),
        ({"seeds": [1], "finish_reasons": [None], "images": []}, ModelError),
        ({"seeds": [1], "finish_reasons": [None], "images": ["bm90IGEgcG5n"]}, ModelError),
        ({"images": "not a list"}, ModelError),
    ],
)
def test_stability_finish_reasons(body: dict[str, Any], error: type[ImageGenError]) -> None:
    with pytest.raises(error) as info:
        adapter_for(SD35_LARGE).parse_response(body)
    assert type(info.value) is error


# -- Titan v2 and Nova Canvas -------------------------------------------------------------------


def test_titan_body_shape() -> None:
    body = adapter_for(TITAN_IMAGE_V2).build_body("a cat", "dogs", 1152, 640, seed=7)
    assert body == {
        "taskType": "TEXT_IMAGE",
        "textToImageParams": {"text": "a cat", "negativeText": "dogs"},
        "imageGenerationConfig": {
            "numberOfImages": 1,
            "width": 1152,
            "height": 640,
            "quality": "standard",
            "seed": 7,
        },
    }
    assert (
        "negativeText"
        not in adapter_for(TITAN_IMAGE_V2).build_body("a", None, 512, 512, 1)["textToImageParams"]
    )


def test_titan_limits() -> None:
    adapter = adapter_for(TITAN_IMAGE_V2)
    assert adapter.output_size(1173, 640) == (1173, 640)
    with pytest.raises(InvalidPromptError) as info:
        adapter.check_request("a cat", None, 1344, 768)
    assert info.value.field == "width"
    assert "1024x1024" in info.value.message
    assert "1173x640" in info.value.message
    with pytest.raises(InvalidPromptError, match="512"):
        adapter.check_request("x" * 513, None, 512, 512)
    with pytest.raises(InvalidPromptError) as info:
        adapter.build_body("x", None, 512, 512, seed=2_147_483_647)
    assert info.value.field == "seed"


def test_nova_limits_and_body() -> None:
    adapter = adapter_for(NOVA_CANVAS)
    adapter.check_request("x" * 1024, None, 1344, 768)
    assert adapter.output_size(2032, 2048) == (2032, 2048)
    for width, height, field in [
        (1000, 1024, "width"),  # not a multiple of 16
        (304, 1024, "width"),  # below 320
        (1024, 4112, "height"),  # above 4096
        (320, 1344, "width"),  # 1:4.2
        (2048, 2048, "width"),  # 4,194,304 pixels is not fewer than 4,194,304
    ]:
        with pytest.raises(InvalidPromptError) as info:
            adapter.check_request("a", None, width, height)
        assert info.value.field == field, (width, height)
    with pytest.raises(InvalidPromptError):
        adapter.check_request("x" * 1025, None, 1024, 1024)
    adapter.build_body("a", None, 1024, 1024, seed=858_993_459)
    with pytest.raises(InvalidPromptError):
        adapter.build_body("a", None, 1024, 1024, seed=858_993_460)
    assert adapter.build_body("a", None, 1024, 1024, seed=1)["taskType"] == "TEXT_IMAGE"


def test_amazon_response_parsing() -> None:
    adapter = adapter_for(NOVA_CANVAS)
    image = adapter.parse_response({"images": [_b64_png(512, 512)], "error": None})
    assert (image.width, image.height, image.seed) == (512, 512, None)
    with pytest.raises(ContentFilteredError):
        adapter.parse_response({"images": [], "error": "blocked by our content filters"})
    with pytest.raises(ModelError):
        adapter.parse_response({"images": [], "error": "something broke"})


# -- SDXL 1.0 -----------------------------------------------------------------------------------


def test_sdxl_body_shape_and_sizes() -> None:
    adapter = adapter_for(SDXL_1_0)
    body = adapter.build_body("a cat", "dogs", 1344, 768, seed=3)
    assert body == {
        "text_prompts": [{"text": "a cat", "weight": 1.0}, {"text": "dogs", "weight": -1.0}],
        "height": 768,
        "width": 1344,
        "cfg_scale": 7.0,
        "steps": 30,
        "samples": 1,
        "seed": 3,
    }
    with pytest.raises(InvalidPromptError) as info:
        adapter.check_request("a", None, 512, 512)
    assert "1024x1024" in info.value.message
    with pytest.raises(InvalidPromptError):
        adapter.check_request("x" * 2001, None, 1024, 1024)


@pytest.mark.parametrize(
    ("reason", "error"), [("CONTENT_FILTERED", ContentFilteredError), ("ERROR", ModelError)]
)
def test_sdxl_finish_reasons(reason: str, error: type[ImageGenError]) -> None:
    adapter = adapter_for(SDXL_1_0)
    ok = adapter.parse_response(
        {
            "result": "success",
            "artifacts": [{"seed": 9, "base64": _b64_png(1024, 1024), "finishReason": "SUCCESS"}],
        }
    )
    assert (ok.width, ok.seed) == (1024, 9)
    with pytest.raises(error):
        adapter.parse_response(
            {
                "result": "success",
                "artifacts": [{"seed": 9, "base64": _b64_png(8, 8), "finishReason": reason}],
            }
        )


# -- error mapping through botocore's Stubber ---------------------------------------------------


def _client_error(code: str, message: str, status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "InvokeModel",
    )


ERROR_CASES = [
    (
        "ThrottlingException",
        "Too many requests, please wait before trying again.",
        429,
        ModelThrottledError,
    ),
    (
        "ServiceQuotaExceededException",
        "Your request exceeds the service quota.",
        400,
        ModelThrottledError,
    ),
    (
        "ModelTimeoutException",
        "Model has timed out in processing the request.",
        408,
        ModelTransientError,
    ),
    ("ServiceUnavailableException", "Service unavailable", 503, ModelTransientError),
    ("InternalServerException", "Internal server error", 500, ModelTransientError),
    ("ModelNotReadyException", "Model is not ready", 429, ModelTransientError),
    ("ModelErrorException", "The model failed", 424, ModelError),
    (
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
        403,
        ModelUnavailableError,
    ),
    (
        "ResourceNotFoundException",
        "This model version has reached the end of its life. Please refer to the AWS documentation for more details.",  # noqa: E501
        404,
        ModelUnavailableError,
    ),
    (
        "ResourceNotFoundException",
        "Access denied. This Model is marked by provider as Legacy and you have not been actively using the model in the last 30 days. Please upgrade to an active model on Amazon Bedrock",  # noqa: E501
        404,
        ModelUnavailableError,
    ),
    (
        "ValidationException",
        "Invocation of model ID stability.sd3-5-large-v1:0 with on-demand throughput isn't supported. Retry your request with the ID or ARN of an inference profile that contains this model.",  # noqa: E501
        400,
        ModelUnavailableError,
    ),
    (
        "ValidationException",
        "The provided model identifier is invalid.",
        400,
        ModelUnavailableError,
    ),
    ("ValidationException", "Operation not allowed", 400, ModelUnavailableError),
    (
        "ValidationException",
        "This request has been blocked by our content filters. Please adjust your text prompt to submit a new request.",  # noqa: E501
        400,
        ContentFilteredError,
    ),
    (
        "ValidationException",
        "This request has been blocked by our content filters because the generated image(s) may conflict with our AUP or AWS Responsible AI Policy.",  # noqa: E501
        400,
        ContentFilteredError,
    ),
    (
        "ValidationException",
        "Malformed input request: #: extraneous key [width] is not permitted",
        400,
        ModelError,
    ),
    (
        "ValidationException",
        "aspect_ratio: must be one of 16:9, 1:1 (model not supported value)",
        400,
        ModelError,
    ),
    ("SomethingNewException", "?", 502, ModelTransientError),
    ("SomethingNewException", "?", 400, ModelError),
]


@pytest.mark.parametrize(("code", "message", "status", "error"), ERROR_CASES)
def test_error_from_client_error(
    code: str, message: str, status: int, error: type[ImageGenError]
) -> None:
    mapped = error_from_client_error(_client_error(code, message, status), STABLE_IMAGE_CORE)
    assert type(mapped) is error


@pytest.mark.parametrize(("code", "message", "status", "error"), ERROR_CASES[:12])
def test_generate_with_bedrock_maps_stubbed_errors(
    code: str, message: str, status: int, error: type[ImageGenError]
) -> None:
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.add_client_error(
        "invoke_model", service_error_code=code, service_message=message, http_status_code=status
    )
    with stubber, pytest.raises(error) as info:
        generate_with_bedrock(client, STABLE_IMAGE_CORE, "a cat", None, 1024, 1024, seed=1)
    assert isinstance(info.value.__cause__, ClientError)


def test_generate_with_bedrock_success_through_stubber() -> None:
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    payload = json.dumps(
        {"seeds": [77], "finish_reasons": [None], "images": [_b64_png(1344, 768)]}
    ).encode()
    expected_body = {
        "prompt": "a lighthouse",
        "aspect_ratio": "16:9",
        "seed": 77,
        "output_format": "png",
        "mode": "text-to-image",
    }
    with Stubber(client) as stubber:
        stubber.add_response(
            "invoke_model",
            {
                "body": StreamingBody(io.BytesIO(payload), len(payload)),
                "contentType": "application/json",
            },
            {
                "modelId": SD35_LARGE,
                "body": json.dumps(expected_body),
                "accept": "application/json",
                "contentType": "application/json",
            },
        )
        image = generate_with_bedrock(client, SD35_LARGE, "a lighthouse", None, 1920, 1080, seed=77)
        stubber.assert_no_pending_responses()
    assert (image.width, image.height, image.seed) == (1344, 768, 77)


def test_bad_input_is_never_sent() -> None:
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    with Stubber(client), pytest.raises(InvalidPromptError):
        # Stubber raises if an unexpected call is made; the size is refused before that.
        generate_with_bedrock(client, STABLE_IMAGE_CORE, "a cat", None, 1000, 700, seed=1)


class _TimingOutClient:
    def invoke_model(self, **kwargs: Any) -> Any:
        raise ReadTimeoutError(endpoint_url="https://bedrock-runtime.us-east-1.amazonaws.com")


def test_read_timeout_is_transient() -> None:
    with pytest.raises(ModelTransientError):
        generate_with_bedrock(_TimingOutClient(), STABLE_IMAGE_CORE, "a", None, 512, 512, seed=1)
