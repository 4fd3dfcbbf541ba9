"""Stability's SDXL 1.0 on Bedrock (legacy for us), the older Stability request format.

Source checked: Amazon Bedrock User Guide, "Stability.ai Diffusion 1.0 text to image",
https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-diffusion-1-0-text-image.html

Request ``{"text_prompts": [{"text", "weight"}], "height", "width", "cfg_scale",
"clip_guidance_preset", "sampler", "samples", "seed", "steps", "style_preset", "extras"}``;
each prompt text 0..2000 characters, a negative weight marks a negative prompt. Response
``{"result": "success", "artifacts": [{"seed", "base64", "finishReason": "SUCCESS" | "ERROR" |
"CONTENT_FILTERED"}]}``. Sizes: the SDXL 1.0 sizes of Stability's v1 generation API
(:data:`SDXL_SIZES`); seed 0..4,294,967,295.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imagegen_common.bedrock.base import GeneratedImage, ModelAdapter, size_label
from imagegen_common.errors import ContentFilteredError, InvalidPromptError, ModelError

SDXL_1_0 = "stability.stable-diffusion-xl-v1"

SDXL_SIZES: tuple[tuple[int, int], ...] = (
    (1024, 1024),
    (1152, 896),
    (1216, 832),
    (1344, 768),
    (1536, 640),
    (640, 1536),
    (768, 1344),
    (832, 1216),
    (896, 1152),
)

SDXL_DEFAULT_CFG_SCALE = 7.0
SDXL_DEFAULT_STEPS = 30


class TextPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=2000)
    weight: float = 1.0


class SdxlTextToImageBody(BaseModel):
    """The ``InvokeModel`` body of an SDXL 1.0 text-to-image request."""

    model_config = ConfigDict(extra="forbid")

    text_prompts: list[TextPrompt] = Field(min_length=1)
    height: int
    width: int
    cfg_scale: float = Field(default=SDXL_DEFAULT_CFG_SCALE, ge=0, le=35)
    steps: int = Field(default=SDXL_DEFAULT_STEPS, ge=10, le=50)
    samples: Literal[1] = 1
    seed: int = Field(ge=0, le=4_294_967_295)


class SdxlArtifact(BaseModel):
    model_config = ConfigDict(extra="ignore")

    seed: int | None = None
    base64: str | None = None
    finishReason: str | None = None


class SdxlResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    result: str | None = None
    artifacts: list[SdxlArtifact] | None = None


class Sdxl10Adapter(ModelAdapter):
    family = "stability-sdxl"
    legacy = True
    images_per_call = 1
    max_prompt_chars = 2000
    max_negative_prompt_chars = 2000
    max_seed = 4_294_967_295

    def _check_size(self, width: int, height: int) -> None:
        if (width, height) not in SDXL_SIZES:
            allowed = ", ".join(size_label(s) for s in SDXL_SIZES)
            raise InvalidPromptError(
                f"width x height {width}x{height} is not a size SDXL 1.0 makes; allowed sizes: "
                f"{allowed}",
                field="width",
            )

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        self._check_size(width, height)
        return width, height

    def build_body(
        self, prompt: str, negative_prompt: str | None, width: int, height: int, seed: int
    ) -> dict[str, Any]:
        self.check_seed(seed)
        prompts = [TextPrompt(text=prompt, weight=1.0)]
        if negative_prompt:
            prompts.append(TextPrompt(text=negative_prompt, weight=-1.0))
        body = SdxlTextToImageBody(text_prompts=prompts, width=width, height=height, seed=seed)
        return body.model_dump()

    def parse_response(self, body: dict[str, Any]) -> GeneratedImage:
        model_id = self.model_ids[0]
        try:
            response = SdxlResponse.model_validate(body)
        except ValidationError as e:
            raise ModelError(f"{model_id} answered with an unexpected body: {e}") from e
        if not response.artifacts:
            raise ModelError(f"{model_id} answered without an image (result={response.result}).")
        artifact = response.artifacts[0]
        if artifact.finishReason == "CONTENT_FILTERED":
            raise ContentFilteredError("The model's safety filter blocked the image.")
        if artifact.finishReason not in (None, "SUCCESS") or not artifact.base64:
            raise ModelError(f"{model_id} failed to make the image ({artifact.finishReason}).")
        return GeneratedImage.from_base64(artifact.base64, seed=artifact.seed, model_id=model_id)
