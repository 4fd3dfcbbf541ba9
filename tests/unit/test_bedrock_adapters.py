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
    SD35_LARGE,
    STABLE_IMAGE_CORE,
    STABLE_IMAGE_ULTRA,
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


@pytest.mark.parametrize(
    "model_id",
    [
        # Past their end of life on Bedrock: no adapter is kept for them.
        "amazon.titan-image-generator-v2:0",
        "amazon.nova-canvas-v1:0",
        "stability.stable-diffusion-xl-v1",
        "stability.nope-v1:0",
    ],
)
def test_unknown_model_id_is_invalid_prompt_naming_known_ids(model_id: str) -> None:
    with pytest.raises(InvalidPromptError) as info:
        adapter_for(model_id)
    assert info.value.field == "model_id"
    for known in KNOWN_MODEL_IDS:
        assert known in info.value.message


def test_registry_holds_the_three_stability_models() -> None:
    assert KNOWN_MODEL_IDS == STABILITY_IDS
    for model_id in STABILITY_IDS:
        adapter = adapter_for(model_id)
        assert adapter.family == "stability"
        assert adapter.provider == "Stability AI"
        assert adapter.model_id == model_id


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
    assert image.data.startswith(b"\x89PNG")


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
