"""Generation controls: which model takes which, the values a job records, the formats written."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime
from typing import Any

import pytest
from PIL import Image

from imagegen_common.bedrock import ADAPTERS, STABLE_IMAGE_CORE, adapter_for
from imagegen_common.bedrock.stability import OUTPUT_SIZES
from imagegen_common.errors import InvalidPromptError, ModelError
from imagegen_common.image_files import read_image_header
from imagegen_common.jobs import plan_job, resolve_request
from imagegen_common.models import (
    AspectRatio,
    GenerateRequest,
    GenerationControls,
    Job,
    OutputFormat,
    Parameters,
    Scheduler,
)
from imagegen_common.presign import parameters_of
from imagegen_common.settings import GenerationSettings


def settings(**overrides: Any) -> GenerationSettings:
    return GenerationSettings(images_bucket="images", **overrides)


def job(**request: Any) -> Job:
    return Job(
        job_id="job-1",
        owner="apikey:a",
        submitted_at=datetime(2026, 12, 4, tzinfo=UTC),
        request=GenerateRequest(**{"prompt": "a fox", **request}),
    )


def test_a_gpu_job_records_its_defaults() -> None:
    planned = plan_job(
        job(backend="gpu"), settings(gpu_default_steps=3, gpu_default_guidance_scale=1.5)
    )

    assert planned.controls == GenerationControls(
        output_format=OutputFormat.PNG,
        steps=3,
        guidance_scale=1.5,
        scheduler=Scheduler.DEFAULT,
    )
    assert planned.images[0].s3_key == "images/job-1/0.png"


def test_a_gpu_job_runs_with_the_controls_it_asks_for() -> None:
    planned = plan_job(
        job(
            backend="gpu",
            steps=4,
            guidance_scale=0.0,
            scheduler="euler_ancestral",
            output_format="jpeg",
            output_quality=70,
        ),
        settings(),
    )

    assert planned.controls == GenerationControls(
        output_format=OutputFormat.JPEG,
        output_quality=70,
        steps=4,
        guidance_scale=0.0,
        scheduler=Scheduler.EULER_ANCESTRAL,
    )
    assert planned.images[0].s3_key == "images/job-1/0.jpg"
    # The events say what the job ran with.
    parameters = parameters_of(planned)
    assert (parameters.steps, parameters.scheduler, parameters.output_format) == (
        4,
        Scheduler.EULER_ANCESTRAL,
        OutputFormat.JPEG,
    )


def test_a_lossy_format_gets_the_default_quality_and_webp_its_own_key() -> None:
    planned = plan_job(job(backend="gpu", output_format="webp"), settings())

    assert planned.controls.output_quality == 90
    assert planned.images[0].s3_key == "images/job-1/0.webp"


@pytest.mark.parametrize("ratio", list(AspectRatio))
def test_an_aspect_ratio_gives_the_models_size_and_that_size_gives_it_back(
    ratio: AspectRatio,
) -> None:
    planned = plan_job(job(aspect_ratio=ratio.value), settings())

    assert (planned.width, planned.height) == OUTPUT_SIZES[ratio.value]
    assert planned.controls.aspect_ratio is ratio
    assert adapter_for(STABLE_IMAGE_CORE).aspect_ratio(planned.width, planned.height) == ratio


def test_the_ratio_table_is_the_aspect_ratio_enum() -> None:
    assert set(OUTPUT_SIZES) == {ratio.value for ratio in AspectRatio}


def test_a_bedrock_job_given_a_size_records_the_ratio_sent() -> None:
    planned = plan_job(job(width=1344, height=768, output_format="jpeg"), settings())

    assert planned.controls == GenerationControls(
        output_format=OutputFormat.JPEG, output_quality=90, aspect_ratio=AspectRatio.R16_9
    )


@pytest.mark.parametrize(
    ("request_fields", "field", "named"),
    [
        ({"steps": 4}, "steps", "gpu"),
        ({"guidance_scale": 2.0}, "guidance_scale", "gpu"),
        ({"scheduler": "ddim"}, "scheduler", "gpu"),
        ({"output_format": "jpeg", "output_quality": 50}, "output_quality", "gpu"),
        ({"output_format": "webp"}, "output_format", "gpu"),
        ({"backend": "gpu", "aspect_ratio": "16:9"}, "aspect_ratio", STABLE_IMAGE_CORE),
        ({"backend": "gpu", "steps": 51}, "steps", "GpuMaxSteps"),
    ],
)
def test_a_control_the_model_does_not_take_is_refused_naming_who_takes_it(
    request_fields: dict[str, Any], field: str, named: str
) -> None:
    with pytest.raises(InvalidPromptError) as refused:
        resolve_request(job(**request_fields).request, settings())

    assert refused.value.field == field
    assert named in refused.value.message


def test_every_bedrock_model_says_what_it_takes() -> None:
    from imagegen_common.controls import CONTROL_FIELDS

    for adapter in ADAPTERS.values():
        assert adapter.takes <= set(CONTROL_FIELDS)
        assert OutputFormat.PNG in adapter.output_formats


@pytest.mark.parametrize("output_format", [OutputFormat.PNG, OutputFormat.JPEG])
def test_the_bedrock_body_asks_for_the_format_and_the_answer_must_be_it(
    output_format: OutputFormat,
) -> None:
    adapter = adapter_for(STABLE_IMAGE_CORE)
    body = adapter.build_body("a fox", None, 1024, 1024, 7, output_format)
    assert body["output_format"] == output_format.value

    other = OutputFormat.PNG if output_format is OutputFormat.JPEG else OutputFormat.JPEG
    answer = {"seeds": [7], "finish_reasons": [None], "images": [_image_b64(other)]}
    with pytest.raises(ModelError, match="was asked"):
        adapter.parse_response(answer, output_format)
    answer["images"] = [_image_b64(output_format)]
    image = adapter.parse_response(answer, output_format)
    assert (image.format, image.width, image.height) == (output_format, 32, 16)


def _image_b64(output_format: OutputFormat) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 16), (1, 2, 3)).save(buffer, format=output_format.value.upper())
    return base64.b64encode(buffer.getvalue()).decode()


def _png_claiming(width: int, height: int) -> bytes:
    """A few bytes of PNG whose IHDR claims ``width`` x ``height``: a decompression bomb."""
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_a_header_is_read_without_decoding_what_it_claims() -> None:
    # 10000 x 10000 is past Pillow's warning (MAX_IMAGE_PIXELS) but under its refusal (twice
    # that): the size is read for the caller to judge, and nothing is decoded.
    header = read_image_header(_png_claiming(10_000, 10_000))

    assert (header.format, header.pixels) == (OutputFormat.PNG, 100_000_000)


def test_a_bomb_past_pillows_limit_is_refused_from_its_header() -> None:
    with pytest.raises(ValueError, match="more pixels than can be decoded safely"):
        read_image_header(_png_claiming(20_000, 20_000))


@pytest.mark.parametrize("data", [b"", b"GIF89a" + b"\0" * 32, b"not an image at all"])
def test_anything_but_png_jpeg_or_webp_is_not_an_image_here(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a PNG, JPEG or WebP"):
        read_image_header(data)


def test_a_job_planned_before_controls_existed_reads_as_png_with_no_others() -> None:
    # The input of an execution started before schema 1.2 has no "controls".
    payload = job().model_dump(mode="json")
    del payload["controls"]

    old = Job.model_validate(payload)

    assert old.controls == GenerationControls()
    assert Parameters.of(old.request, 1, 1, old.controls).output_format is OutputFormat.PNG
