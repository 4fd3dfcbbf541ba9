"""The local Bedrock stand-in, through real boto3 clients and generate_with_bedrock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from imagegen.local.fake_bedrock import FakeBedrock
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
    ModelError,
    ModelThrottledError,
    ModelTransientError,
    ModelUnavailableError,
)

# botocore counts Config(retries={"max_attempts": n}) as retries after the first call;
# total_max_attempts=1 makes exactly one call, so scripted failures surface unretried.
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture
def fake() -> Iterator[FakeBedrock]:
    with FakeBedrock() as server:
        yield server


@pytest.fixture
def runtime(fake: FakeBedrock) -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=fake.endpoint_url,
        config=NO_RETRIES,
    )


@pytest.mark.parametrize(
    ("model_id", "width", "height", "seed"),
    [
        (STABLE_IMAGE_CORE, 1024, 1024, 11),
        (STABLE_IMAGE_ULTRA, 1920, 1080, 12),
        (SD35_LARGE, 768, 1344, 13),
    ],
)
def test_round_trip_per_model(
    fake: FakeBedrock, runtime: Any, model_id: str, width: int, height: int, seed: int
) -> None:
    image = generate_with_bedrock(runtime, model_id, "a red fox", "blurry", width, height, seed)
    assert (image.width, image.height) == adapter_for(model_id).output_size(width, height)
    assert image.data.startswith(b"\x89PNG")
    assert image.seed in (seed, None)
    assert len(fake.calls) == 1
    assert fake.calls[0].model_id == model_id
    assert fake.calls[0].body == adapter_for(model_id).build_body(
        "a red fox", "blurry", width, height, seed
    )


def test_same_seed_same_image(runtime: Any) -> None:
    first = generate_with_bedrock(runtime, STABLE_IMAGE_CORE, "a", None, 512, 512, 5)
    second = generate_with_bedrock(runtime, STABLE_IMAGE_CORE, "b", None, 512, 512, 5)
    third = generate_with_bedrock(runtime, STABLE_IMAGE_CORE, "a", None, 512, 512, 6)
    assert first.data == second.data != third.data


def test_standard_endpoint_env_vars(fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.endpoint_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", fake.endpoint_url)
    runtime = boto3.session.Session().client("bedrock-runtime", region_name="us-east-1")
    control = boto3.session.Session().client("bedrock", region_name="us-east-1")
    assert runtime.meta.endpoint_url == fake.endpoint_url
    image = generate_with_bedrock(runtime, SD35_LARGE, "a", None, 1024, 1024, 1)
    assert image.width == 1024
    status = control.get_foundation_model(modelIdentifier=SD35_LARGE)["modelDetails"]
    assert status["modelLifecycle"]["status"] == "ACTIVE"


@pytest.mark.parametrize(
    ("kind", "model_id", "error"),
    [
        ("throttle", STABLE_IMAGE_CORE, ModelThrottledError),
        ("timeout", STABLE_IMAGE_CORE, ModelTransientError),
        ("unavailable", STABLE_IMAGE_CORE, ModelUnavailableError),
        ("filter_prompt", STABLE_IMAGE_CORE, ContentFilteredError),
        ("filter_output", SD35_LARGE, ContentFilteredError),
        ("inference_error", STABLE_IMAGE_ULTRA, ModelError),
        ("unavailable", SD35_LARGE, ModelUnavailableError),
    ],
)
def test_failure_kinds_raise_typed_errors(
    fake: FakeBedrock, runtime: Any, kind: str, model_id: str, error: type[ImageGenError]
) -> None:
    fake.fail_next(kind)
    with pytest.raises(error) as info:
        generate_with_bedrock(runtime, model_id, "a", None, 1024, 1024, seed=3)
    assert type(info.value) is error
    # Only the next call fails.
    assert generate_with_bedrock(runtime, model_id, "a", None, 1024, 1024, seed=3).data


def test_error_wire_format_is_what_botocore_expects(fake: FakeBedrock, runtime: Any) -> None:
    fake.fail_next("throttle")
    with pytest.raises(ClientError) as info:
        runtime.invoke_model(modelId=STABLE_IMAGE_CORE, body=json.dumps({"prompt": "a"}))
    assert info.value.response["Error"]["Code"] == "ThrottlingException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert "Too many requests" in info.value.response["Error"]["Message"]
    assert type(info.value).__name__ == "ThrottlingException"


def test_fake_rejects_undocumented_body(runtime: Any) -> None:
    body = {"prompt": "a", "width": 1024, "height": 1024}
    with pytest.raises(ClientError) as info:
        runtime.invoke_model(modelId=STABLE_IMAGE_CORE, body=json.dumps(body))
    assert info.value.response["Error"]["Code"] == "ValidationException"


def test_fail_next_scoped_to_model_and_times(fake: FakeBedrock, runtime: Any) -> None:
    fake.fail_next("throttle", times=2, model_id=SD35_LARGE)
    generate_with_bedrock(runtime, STABLE_IMAGE_CORE, "a", None, 512, 512, 1)
    for _ in range(2):
        with pytest.raises(ModelThrottledError):
            generate_with_bedrock(runtime, SD35_LARGE, "a", None, 512, 512, 1)
    generate_with_bedrock(runtime, SD35_LARGE, "a", None, 512, 512, 1)
    assert [call.model_id for call in fake.calls] == [STABLE_IMAGE_CORE] + [SD35_LARGE] * 3


def test_fail_next_rejects_unknown_kind(fake: FakeBedrock) -> None:
    with pytest.raises(ValueError, match="throttle"):
        fake.fail_next("explode")


def test_unavailable_models(fake: FakeBedrock, runtime: Any) -> None:
    fake.unavailable_models.add(STABLE_IMAGE_ULTRA)
    with pytest.raises(ModelUnavailableError, match="AccessDeniedException"):
        generate_with_bedrock(runtime, STABLE_IMAGE_ULTRA, "a", None, 512, 512, 1)
    generate_with_bedrock(runtime, STABLE_IMAGE_CORE, "a", None, 512, 512, 1)


@pytest.mark.parametrize("model_id", ["stability.nope-v9:0", "amazon.titan-image-generator-v2:0"])
def test_unknown_model_id_on_the_wire_is_unavailable(runtime: Any, model_id: str) -> None:
    with pytest.raises(ClientError) as info:
        runtime.invoke_model(modelId=model_id, body=b"{}")
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert type(error_from_client_error(info.value, model_id)) is ModelUnavailableError


def test_serves_the_registry_models_and_their_lifecycle(fake: FakeBedrock) -> None:
    control = boto3.client("bedrock", region_name="us-east-1", endpoint_url=fake.endpoint_url)
    for model_id in KNOWN_MODEL_IDS:
        details = control.get_foundation_model(modelIdentifier=model_id)["modelDetails"]
        assert details["modelName"] == adapter_for(model_id).model_name
        assert details["providerName"] == "Stability AI"
        assert details["modelLifecycle"] == {"status": "ACTIVE"}
    legacy, end = datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 6, 1, tzinfo=UTC)
    fake.set_lifecycle(SD35_LARGE, "LEGACY", legacy_time=legacy, end_of_life_time=end)
    lifecycle = control.get_foundation_model(modelIdentifier=SD35_LARGE)["modelDetails"][
        "modelLifecycle"
    ]
    assert lifecycle == {"status": "LEGACY", "legacyTime": legacy, "endOfLifeTime": end}
    with pytest.raises(ValueError, match="not a model"):
        fake.set_lifecycle("amazon.nova-canvas-v1:0", "LEGACY")


def test_concurrent_calls_are_all_recorded(fake: FakeBedrock, runtime: Any) -> None:
    def one(seed: int) -> int:
        return generate_with_bedrock(runtime, STABLE_IMAGE_CORE, "a", None, 512, 512, seed).width

    with ThreadPoolExecutor(max_workers=8) as pool:
        widths = list(pool.map(one, range(1, 17)))
    assert widths == [1024] * 16
    assert sorted(call.body["seed"] for call in fake.calls) == list(range(1, 17))


def test_stop_and_restart() -> None:
    server = FakeBedrock().start()
    url = server.endpoint_url
    server.stop()
    with pytest.raises(RuntimeError):
        _ = server.endpoint_url
    server.start()
    try:
        assert server.endpoint_url.startswith("http://127.0.0.1:")
        assert url.startswith("http://127.0.0.1:")
    finally:
        server.stop()
