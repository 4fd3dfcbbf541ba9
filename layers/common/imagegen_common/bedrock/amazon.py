"""Amazon's image models on Bedrock (legacy for us): Titan Image Generator G1 v2 and Nova Canvas.

Sources checked:
- Amazon Bedrock User Guide, "Amazon Titan Image Generator G1 models",
  https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-titan-image.html
- Amazon Nova User Guide, "Request and response structure for image generation",
  https://docs.aws.amazon.com/nova/latest/userguide/image-gen-req-resp-structure.html
  and its code example "Generate an image" (seed "between 0 and 858,993,459"),
  https://docs.aws.amazon.com/nova/latest/userguide/code-examples-image.html
- AWS SDK code examples, "Invoke Amazon Titan Image on Amazon Bedrock to generate an image".

Both take ``{"taskType": "TEXT_IMAGE", "textToImageParams": {"text", "negativeText"},
"imageGenerationConfig": {"numberOfImages", "width", "height", "quality", "cfgScale", "seed"}}``
and answer ``{"images": [base64, ...], "error": str | null}``. A blocked prompt or image comes
back as a ``ValidationException`` whose message says "blocked by our content filters" (mapped in
``imagegen_common.bedrock.client``). We ask for one image per call; ``cfgScale`` is left to the
model's default.

Limits enforced here:
- Titan v2: text and negativeText 1..512 characters; seed 0..2,147,483,646; width x height one
  of the documented sizes (:data:`TITAN_SIZES`).
- Nova Canvas: text and negativeText 1..1024 characters; seed 0..858,993,459; each side
  320..4096 px and divisible by 16, aspect ratio between 1:4 and 4:1, fewer than 4,194,304
  pixels in all.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imagegen_common.bedrock.base import GeneratedImage, ModelAdapter, size_label
from imagegen_common.errors import ContentFilteredError, InvalidPromptError, ModelError

TITAN_IMAGE_V2 = "amazon.titan-image-generator-v2:0"
NOVA_CANVAS = "amazon.nova-canvas-v1:0"

TITAN_SIZES: frozenset[tuple[int, int]] = frozenset(
    {
        (1024, 1024), (768, 768), (512, 512),
        (768, 1152), (384, 576), (1152, 768), (576, 384),
        (768, 1280), (384, 640), (1280, 768), (640, 384),
        (896, 1152), (448, 576), (1152, 896), (576, 448),
        (768, 1408), (384, 704), (1408, 768), (704, 384),
        (640, 1408), (320, 704), (1408, 640), (704, 320),
        (1152, 640), (1173, 640),
    }
)  # fmt: skip
"""Width x height pairs Titan Image Generator accepts for TEXT_IMAGE."""

NOVA_MIN_SIDE = 320
NOVA_MAX_SIDE = 4096
NOVA_SIDE_MULTIPLE = 16
NOVA_MAX_PIXELS = 4_194_304
NOVA_MAX_RATIO = 4


class TextToImageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    negativeText: str | None = Field(default=None, min_length=1)


class ImageGenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    numberOfImages: Literal[1] = 1
    width: int
    height: int
    quality: Literal["standard", "premium"] = "standard"
    seed: int = Field(ge=0)


class AmazonTextToImageBody(BaseModel):
    """The ``InvokeModel`` body of a Titan Image Generator / Nova Canvas TEXT_IMAGE request."""

    model_config = ConfigDict(extra="forbid")

    taskType: Literal["TEXT_IMAGE"] = "TEXT_IMAGE"
    textToImageParams: TextToImageParams
    imageGenerationConfig: ImageGenerationConfig


class AmazonImageResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    images: list[str] | None = None
    error: str | None = None


class _AmazonImageAdapter(ModelAdapter):
    legacy = True
    images_per_call = 1

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        self._check_size(width, height)
        return width, height

    def build_body(
        self, prompt: str, negative_prompt: str | None, width: int, height: int, seed: int
    ) -> dict[str, Any]:
        self.check_seed(seed)
        body = AmazonTextToImageBody(
            textToImageParams=TextToImageParams(text=prompt, negativeText=negative_prompt or None),
            imageGenerationConfig=ImageGenerationConfig(width=width, height=height, seed=seed),
        )
        return body.model_dump(exclude_none=True)

    def parse_response(self, body: dict[str, Any]) -> GeneratedImage:
        model_id = self.model_ids[0]
        try:
            response = AmazonImageResponse.model_validate(body)
        except ValidationError as e:
            raise ModelError(f"{model_id} answered with an unexpected body: {e}") from e
        if response.error:
            if "content filter" in response.error.lower():
                raise ContentFilteredError(response.error)
            raise ModelError(f"{model_id} failed to make the image: {response.error}")
        if not response.images:
            raise ModelError(f"{model_id} answered without an image.")
        # Neither model echoes the seed; the one we sent is the one used.
        return GeneratedImage.from_base64(response.images[0], seed=None, model_id=model_id)


class TitanImageV2Adapter(_AmazonImageAdapter):
    family = "amazon-titan-image"
    max_prompt_chars = 512
    max_negative_prompt_chars = 512
    max_seed = 2_147_483_646

    def _check_size(self, width: int, height: int) -> None:
        if (width, height) not in TITAN_SIZES:
            allowed = ", ".join(
                size_label(s) for s in sorted(TITAN_SIZES, key=lambda s: (-s[0] * s[1], s))
            )
            raise InvalidPromptError(
                f"width x height {width}x{height} is not a size Titan Image Generator makes; "
                f"allowed sizes: {allowed}",
                field="width",
            )


class NovaCanvasAdapter(_AmazonImageAdapter):
    family = "amazon-nova-canvas"
    max_prompt_chars = 1024
    max_negative_prompt_chars = 1024
    max_seed = 858_993_459

    def _check_size(self, width: int, height: int) -> None:
        for field, value in (("width", width), ("height", height)):
            if not NOVA_MIN_SIDE <= value <= NOVA_MAX_SIDE or value % NOVA_SIDE_MULTIPLE:
                raise InvalidPromptError(
                    f"{field} {value} is not accepted by Nova Canvas: each side must be "
                    f"{NOVA_MIN_SIDE}..{NOVA_MAX_SIDE} px and a multiple of {NOVA_SIDE_MULTIPLE}",
                    field=field,
                )
        if max(width, height) > NOVA_MAX_RATIO * min(width, height):
            raise InvalidPromptError(
                f"width x height {width}x{height} is not accepted by Nova Canvas: the aspect "
                f"ratio must be between 1:{NOVA_MAX_RATIO} and {NOVA_MAX_RATIO}:1",
                field="width",
            )
        if width * height >= NOVA_MAX_PIXELS:
            raise InvalidPromptError(
                f"width x height {width}x{height} is not accepted by Nova Canvas: the image "
                f"must have fewer than {NOVA_MAX_PIXELS} pixels",
                field="width",
            )
