"""Every Bedrock model imagegen can call: the one list of model ids, with each model's adapter.

The deployment's defaults (``settings``), the template's ``ModelId``/``AllowedModelIds`` defaults
(checked by ``tests/unit/test_facts.py``), the local Bedrock stand-in and ``imagegen models`` all
read this list. Bedrock's model lifecycle (Amazon Bedrock User Guide, "Model lifecycle",
https://docs.aws.amazon.com/bedrock/latest/userguide/model-lifecycle.html) decides what belongs
here: the three below are ACTIVE (checked 2026-11-29). A model past its end-of-life date fails
every call, so its adapter is removed rather than kept (Titan Image Generator v2, Nova Canvas and
SDXL 1.0 went that way); ``imagegen models`` warns while a model is LEGACY, before that happens.
"""

from __future__ import annotations

from typing import Final

from imagegen_common.bedrock.base import ModelAdapter
from imagegen_common.bedrock.stability import StabilityAdapter, StableDiffusion35LargeAdapter
from imagegen_common.errors import InvalidPromptError

STABLE_IMAGE_CORE: Final = "stability.stable-image-core-v1:1"
STABLE_IMAGE_ULTRA: Final = "stability.stable-image-ultra-v1:1"
SD35_LARGE: Final = "stability.sd3-5-large-v1:0"

ADAPTERS: Final[dict[str, ModelAdapter]] = {
    adapter.model_id: adapter
    for adapter in (
        StabilityAdapter(STABLE_IMAGE_CORE, "Stable Image Core 1.1"),
        StabilityAdapter(STABLE_IMAGE_ULTRA, "Stable Image Ultra 1.1"),
        StableDiffusion35LargeAdapter(SD35_LARGE, "Stable Diffusion 3.5 Large"),
    )
}
"""Every model id we can call, with its adapter, in the order deployments list them."""

KNOWN_MODEL_IDS: Final[tuple[str, ...]] = tuple(ADAPTERS)
DEFAULT_MODEL_ID: Final = STABLE_IMAGE_CORE
"""The model a request gets when it names none: the fastest and cheapest of the three."""


def adapter_for(model_id: str) -> ModelAdapter:
    """The adapter of ``model_id``; InvalidPromptError(field="model_id") for an unknown id."""
    try:
        return ADAPTERS[model_id]
    except KeyError:
        raise InvalidPromptError(
            f"model_id {model_id!r} is not a model imagegen can call; known model ids: "
            f"{', '.join(KNOWN_MODEL_IDS)}",
            field="model_id",
        ) from None
