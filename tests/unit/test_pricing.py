"""The cost of a job: the price table, its overrides, and the costs the workflow's steps report."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from gpu_service.settings import Settings as GpuSettings
from imagegen.local.fake_bedrock import make_png
from imagegen_common.bedrock.registry import KNOWN_MODEL_IDS
from imagegen_common.failures import describe_failure
from imagegen_common.jobs import plan_job
from imagegen_common.models import (
    Cost,
    ErrorCode,
    ErrorInfo,
    GenerateRequest,
    ImageGeneratedDetail,
    ImageGenerationFailedDetail,
    ImageOutcome,
    Job,
    TaskError,
)
from imagegen_common.presign import sign_generated_images
from imagegen_common.pricing import (
    BEDROCK_IMAGE_PRICES,
    GPU_HOUR_PRICES,
    GPU_INSTANCE_PRICE,
    PricingError,
    bedrock_image_cost,
    parse_price_overrides,
    total_cost,
)
from imagegen_common.settings import GenerationSettings
from tests.conftest import import_function
from tests.unit.test_job_logic import s3_client

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
REPO_ROOT = Path(__file__).resolve().parents[2]
CORE = "stability.stable-image-core-v1:1"


def _planned_job(num_images: int = 2, **settings: Any) -> Job:
    job = Job(
        job_id="job-1",
        owner="apikey:a",
        submitted_at=NOW,
        request=GenerateRequest(prompt="a fox", num_images=num_images),
    )
    return plan_job(job, GenerationSettings(images_bucket="images", **settings))


# --- The table ---------------------------------------------------------------------------------


def test_every_callable_model_has_a_price_with_its_source_and_date() -> None:
    assert set(BEDROCK_IMAGE_PRICES) == set(KNOWN_MODEL_IDS)
    for price in [*BEDROCK_IMAGE_PRICES.values(), GPU_INSTANCE_PRICE]:
        assert price.usd > 0
        assert price.source.startswith("https://aws.amazon.com/")
        assert price.read_on


def test_the_gpu_services_default_hourly_price_is_the_tables() -> None:
    default = GpuSettings.model_fields["gpu_price_per_hour_usd"].default
    assert default == GPU_INSTANCE_PRICE.usd
    for price in GPU_HOUR_PRICES.values():
        assert price.usd > 0 and price.unit == "GPU-hour"
        assert price.source.startswith("https://aws.amazon.com/") and price.read_on


def cost_md_gpu_rows() -> list[dict[str, str]]:
    """The rows of docs/cost.md's GPU table (throughput, source, GPU, price, cost per image)."""
    text = (REPO_ROOT / "docs" / "cost.md").read_text()
    table = text.split("| throughput | source | GPU | price per GPU-hour | cost per image |", 1)[1]
    rows = []
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append(dict(zip(["throughput", "source", "gpu", "price", "cost"], cells, strict=True)))
    return rows


def test_docs_price_each_gpu_at_its_own_hour_and_the_arithmetic_holds() -> None:
    rows = cost_md_gpu_rows()
    assert {row["gpu"] for row in rows} == set(GPU_HOUR_PRICES)
    for row in rows:
        price = GPU_HOUR_PRICES[row["gpu"]].usd
        assert float(row["price"].lstrip("$")) == price, row
        images_per_second = float(row["throughput"].split()[0])
        expected = price / 3600 / images_per_second
        assert float(row["cost"].lstrip("$")) == pytest.approx(expected, rel=0.02), row


def test_overrides_are_read_from_model_equals_price_pairs() -> None:
    assert parse_price_overrides(f" {CORE}=0.05 , stability.sd3-5-large-v1:0=0 ,") == {
        CORE: 0.05,
        "stability.sd3-5-large-v1:0": 0.0,
    }
    assert parse_price_overrides("") == {}


@pytest.mark.parametrize("text", [CORE, f"{CORE}=", f"{CORE}=-1", f"{CORE}=nan", "=0.04"])
def test_a_bad_override_names_the_entry_and_the_form(text: str) -> None:
    with pytest.raises(PricingError, match="model_id=price"):
        parse_price_overrides(text)


def test_settings_take_overrides_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGES_BUCKET", "images")
    monkeypatch.setenv("BEDROCK_PRICES_USD", f"{CORE}=0.05")
    assert GenerationSettings().bedrock_prices_usd == {CORE: 0.05}  # type: ignore[call-arg]

    monkeypatch.setenv("BEDROCK_PRICES_USD", f"{CORE}=cheap")
    with pytest.raises(ValidationError, match="bedrock_prices_usd"):
        GenerationSettings()  # type: ignore[call-arg]


def test_an_image_costs_the_override_else_the_table_price() -> None:
    listed = bedrock_image_cost(CORE)
    assert listed.usd == BEDROCK_IMAGE_PRICES[CORE].usd
    assert CORE in listed.basis and "aws.amazon.com/bedrock/pricing" in listed.basis
    overridden = bedrock_image_cost(CORE, {CORE: 0.05})
    assert overridden.usd == 0.05
    assert "BedrockPriceOverrides" in overridden.basis


# --- Bedrock images ----------------------------------------------------------------------------


class _StubBedrock:
    """Answers InvokeModel as a Stability model does: one PNG, or a filtered answer."""

    def __init__(self, filtered: bool = False) -> None:
        self.filtered = filtered

    def invoke_model(self, **_: Any) -> dict[str, Any]:
        if self.filtered:
            body: dict[str, Any] = {"finish_reasons": ["Filter reason: prompt"]}
        else:
            png = base64.b64encode(make_png(64, 64, 7)).decode()
            body = {"seeds": [7], "finish_reasons": [None], "images": [png]}
        return {"body": io.BytesIO(json.dumps(body).encode())}


class _StubS3:
    def put_object(self, **_: Any) -> dict[str, Any]:
        return {}


def test_each_bedrock_image_outcome_carries_its_price() -> None:
    generation = import_function("generate_with_bedrock", "generation")
    job = _planned_job(2, bedrock_prices_usd={CORE: 0.05})
    [first, second] = job.images

    made = generation.generate_image_with_bedrock(
        job, first, _StubBedrock(), _StubS3(), {CORE: 0.05}
    )
    filtered = generation.generate_image_with_bedrock(
        job, second, _StubBedrock(filtered=True), _StubS3(), {CORE: 0.05}
    )

    assert made.succeeded and made.cost.usd == 0.05
    assert filtered.error.code is ErrorCode.CONTENT_FILTERED
    assert filtered.cost.usd == 0.0
    assert "not billed" in filtered.cost.basis


# --- Events ------------------------------------------------------------------------------------


def _made(index: int, cost: Cost | None) -> ImageOutcome:
    return ImageOutcome(
        index=index,
        seed=index,
        bucket="images",
        s3_key=f"images/job-1/{index}.png",
        width=1024,
        height=1024,
        cost=cost,
    )


def test_image_generated_sums_the_images_costs() -> None:
    job = _planned_job(3)
    outcomes = [
        _made(0, bedrock_image_cost(CORE)),
        _made(1, bedrock_image_cost(CORE)),
        ImageOutcome(
            index=2, seed=2, task_error=TaskError(Error="ModelThrottledError", Cause="slow down")
        ),
    ]

    detail = sign_generated_images(job, outcomes, s3_client(), 300, NOW)

    assert detail.schema_version == "1.2"
    assert detail.cost is not None
    assert detail.cost.usd == pytest.approx(2 * BEDROCK_IMAGE_PRICES[CORE].usd)
    assert detail.cost.basis.startswith("2 x Bedrock price per image")
    assert "ModelThrottledError): not billed" in detail.cost.basis


def test_a_made_image_without_a_cost_is_named_not_hidden() -> None:
    total = total_cost([_made(0, Cost(usd=0.25, basis="GPU")), _made(1, None)])
    assert total.usd == 0.25
    assert "1 image(s) with no reported cost" in total.basis


def test_a_failed_job_reports_what_was_spent_at_least_zero() -> None:
    nothing = describe_failure("exec-1", None, TaskError(Error="ContentFilteredError"), NOW)
    assert nothing.schema_version == "1.2"
    assert nothing.cost is not None and nothing.cost.usd == 0.0
    assert "no image was made" in nothing.cost.basis

    spent = describe_failure(
        "exec-1",
        None,
        TaskError(Error="States.TaskFailed"),
        NOW,
        spent=[_made(0, bedrock_image_cost(CORE))],
    )
    assert spent.cost is not None and spent.cost.usd == BEDROCK_IMAGE_PRICES[CORE].usd


class _Version10ImageGenerated(BaseModel):
    """A subscriber written against schema 1.0: the fields it knew, nothing about cost."""

    schema_version: str
    execution_id: str
    images: list[dict[str, Any]]
    completed_at: datetime


class _Version10Failed(BaseModel):
    schema_version: str
    execution_id: str
    error: ErrorInfo
    failed_at: datetime


def test_a_version_10_consumer_reads_version_11_details() -> None:
    job = _planned_job(1)
    generated = sign_generated_images(
        job, [_made(0, bedrock_image_cost(CORE))], s3_client(), 300, NOW
    ).model_dump(mode="json")
    failed = describe_failure("exec-1", None, TaskError(Error="X"), NOW).model_dump(mode="json")

    old_generated = _Version10ImageGenerated.model_validate(generated)
    old_failed = _Version10Failed.model_validate(failed)

    assert old_generated.images[0]["url"].startswith("https://")
    assert old_failed.error.code is ErrorCode.INTERNAL_ERROR
    # 1.0 details (no cost) still parse with the 1.1 models, e.g. an old execution's output.
    del generated["cost"], failed["cost"]
    old = ImageGeneratedDetail.model_validate({**generated, "schema_version": "1.0"})
    assert old.cost is None
    assert (
        ImageGenerationFailedDetail.model_validate({**failed, "schema_version": "1.0"}).cost is None
    )
