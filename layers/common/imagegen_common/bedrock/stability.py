"""Stability AI's text-to-image models on Bedrock: Stable Image Core, Stable Image Ultra and
Stable Diffusion 3.5 Large (their ids and names are listed once, in ``registry``).

Sources checked (Amazon Bedrock User Guide):
- "Stable Image Core request and response",
  https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-diffusion-stable-image-core-text-image-request-response.html
- "Stable Image Ultra request and response",
  https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-diffusion-stable-ultra-text-image-request-response.html
- "Stability.ai Stable Diffusion 3.5 Large",
  https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-diffusion-3-5-large.html
and Stability's API schema for the same models (``GenerateUltraRequest``: seed 0..4294967294,
prompt and negative_prompt at most 10,000 characters).

What they say, and what we send:
- body ``prompt`` (required, up to 10,000 characters), ``negative_prompt`` (up to 10,000),
  ``aspect_ratio`` (enum 16:9, 1:1, 21:9, 2:3, 3:2, 4:5, 5:4, 9:16, 9:21; default 1:1; the
  models take no width/height), ``seed`` (0 = random; Bedrock's pages say up to 4294967295,
  Stability's schema 4294967294: we keep the stricter), ``output_format`` (png | jpeg: what
  the request's output_format asks, png by default), and for SD3.5 Large ``mode``
  (text-to-image | image-to-image).
- response ``{"seeds": [...], "finish_reasons": [null | "Filter reason: prompt" |
  "Filter reason: output image" | "Filter reason: input image" | "Inference error"],
  "images": [base64, ...]}``; a filtered answer may carry ``finish_reasons`` alone.
- resolution: SD3.5 Large makes about 1 megapixel; the Core page bounds its output to
  640..1536 px per side. The pixel size per aspect ratio below is the ~1 MP bucket table these
  models use (1:1 1024x1024 ... 21:9 1536x640). The size actually received is always read from
  the PNG header, so a difference would show in the image's reported size, never break it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imagegen_common.bedrock.base import GeneratedImage, ModelAdapter, size_label
from imagegen_common.errors import ContentFilteredError, InvalidPromptError, ModelError
from imagegen_common.models import AspectRatio, OutputFormat

OUTPUT_SIZES: Final[dict[str, tuple[int, int]]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "21:9": (1536, 640),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "5:4": (1088, 896),
    "4:5": (896, 1088),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}
"""Pixels returned per aspect ratio (width, height); the same table for all three models.
Its keys are ``AspectRatio``'s values (a test holds them together)."""

FILTER_PROMPT = "Filter reason: prompt"
FILTER_OUTPUT_IMAGE = "Filter reason: output image"
FILTER_INPUT_IMAGE = "Filter reason: input image"

MAX_STABILITY_SEED = 4_294_967_294
MAX_STABILITY_PROMPT_CHARS = 10_000


class StabilityTextToImageBody(BaseModel):
    """The ``InvokeModel`` body of a Stability text-to-image request, as documented."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_STABILITY_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_STABILITY_PROMPT_CHARS)
    aspect_ratio: AspectRatio = AspectRatio.R1_1
    seed: int = Field(default=0, ge=0, le=MAX_STABILITY_SEED)
    output_format: Literal["png", "jpeg"] = "png"
    mode: Literal["text-to-image"] | None = None


class StabilityResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    seeds: list[int | str] | None = None
    finish_reasons: list[str | None] | None = None
    images: list[str] | None = None


def reduced_ratio(width: int, height: int) -> str:
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


_RATIO_BY_REDUCED: dict[str, str] = {
    reduced_ratio(*(int(part) for part in name.split(":"))): name for name in OUTPUT_SIZES
}
"""Reduced ratio -> the model's name for it ("7:3" -> "21:9")."""


class StabilityAdapter(ModelAdapter):
    family = "stability"
    provider = "Stability AI"
    max_prompt_chars = MAX_STABILITY_PROMPT_CHARS
    max_negative_prompt_chars = MAX_STABILITY_PROMPT_CHARS
    max_seed = MAX_STABILITY_SEED
    takes = frozenset({"aspect_ratio"})
    output_formats = (OutputFormat.PNG, OutputFormat.JPEG)
    sends_mode: ClassVar[bool] = False

    def aspect_ratio(self, width: int, height: int) -> str:
        """The model's aspect ratio for ``width`` x ``height``.

        Exact by reduced ratio (512x512 -> 1:1, 1920x1080 -> 16:9, 1680x720 -> 21:9), or the
        ratio whose native output is exactly that size (1344x768 -> 16:9, although 1344:768
        reduces to 7:4).
        """
        ratio = reduced_ratio(width, height)
        if ratio in _RATIO_BY_REDUCED:
            return _RATIO_BY_REDUCED[ratio]
        for name, size in OUTPUT_SIZES.items():
            if size == (width, height):
                return name
        allowed = ", ".join(f"{name} (returns {size_label(s)})" for name, s in OUTPUT_SIZES.items())
        raise InvalidPromptError(
            f"width x height {width}x{height} (aspect ratio {ratio}) is not offered by "
            f"{self.family} models, which take an aspect ratio instead of a size; ask for a size "
            f"with one of these aspect ratios: {allowed}",
            field="width",
        )

    def _check_size(self, width: int, height: int) -> None:
        self.aspect_ratio(width, height)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        return OUTPUT_SIZES[self.aspect_ratio(width, height)]

    def size_of_aspect_ratio(self, ratio: AspectRatio) -> tuple[int, int]:
        return OUTPUT_SIZES[ratio.value]

    def build_body(
        self,
        prompt: str,
        negative_prompt: str | None,
        width: int,
        height: int,
        seed: int,
        output_format: OutputFormat = OutputFormat.PNG,
    ) -> dict[str, Any]:
        self.check_seed(seed)
        if output_format not in self.output_formats:
            raise InvalidPromptError(
                f"{self.model_id} makes no {output_format.value} images", field="output_format"
            )
        body = StabilityTextToImageBody(
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            aspect_ratio=AspectRatio(self.aspect_ratio(width, height)),
            seed=seed,
            output_format="jpeg" if output_format is OutputFormat.JPEG else "png",
            mode="text-to-image" if self.sends_mode else None,
        )
        return body.model_dump(mode="json", exclude_none=True)

    def parse_response(
        self, body: dict[str, Any], output_format: OutputFormat = OutputFormat.PNG
    ) -> GeneratedImage:
        model_id = self.model_id
        try:
            response = StabilityResponse.model_validate(body)
        except ValidationError as e:
            raise ModelError(f"{model_id} answered with an unexpected body: {e}") from e
        reason = (response.finish_reasons or [None])[0]
        if reason in (FILTER_PROMPT, FILTER_INPUT_IMAGE):
            raise ContentFilteredError(f"The model's safety filter blocked the prompt ({reason}).")
        if reason == FILTER_OUTPUT_IMAGE:
            raise ContentFilteredError(f"The model's safety filter blocked the image ({reason}).")
        if reason is not None:
            raise ModelError(f"{model_id} failed to make the image ({reason}).")
        if not response.images:
            raise ModelError(f"{model_id} answered without an image.")
        seed = _first_seed(response.seeds)
        return GeneratedImage.from_base64(
            response.images[0], seed=seed, model_id=model_id, expected=output_format
        )


def _first_seed(seeds: list[int | str] | None) -> int | None:
    if not seeds:
        return None
    try:
        return int(seeds[0])
    except ValueError:
        return None


class StableDiffusion35LargeAdapter(StabilityAdapter):
    """SD3.5 Large takes ``mode`` (text-to-image | image-to-image); Core and Ultra need none."""

    sends_mode = True
