"""Bedrock model adapters: one request shape in, each model family's body out, one image back.

``generate_with_bedrock`` is the one call a Lambda function needs; ``adapter_for`` gives the
per-model checks (allowed sizes, prompt length, seed range) and the real output size. Each
family module cites the documentation its fields and limits come from.
"""

from imagegen_common.bedrock.amazon import NOVA_CANVAS, TITAN_IMAGE_V2
from imagegen_common.bedrock.base import GeneratedImage, ModelAdapter
from imagegen_common.bedrock.client import (
    ADAPTERS,
    KNOWN_MODEL_IDS,
    LEGACY_MODEL_IDS,
    adapter_for,
    error_from_client_error,
    generate_with_bedrock,
)
from imagegen_common.bedrock.sdxl import SDXL_1_0
from imagegen_common.bedrock.stability import SD35_LARGE, STABLE_IMAGE_CORE, STABLE_IMAGE_ULTRA

__all__ = [
    "ADAPTERS",
    "KNOWN_MODEL_IDS",
    "LEGACY_MODEL_IDS",
    "NOVA_CANVAS",
    "SD35_LARGE",
    "SDXL_1_0",
    "STABLE_IMAGE_CORE",
    "STABLE_IMAGE_ULTRA",
    "TITAN_IMAGE_V2",
    "GeneratedImage",
    "ModelAdapter",
    "adapter_for",
    "error_from_client_error",
    "generate_with_bedrock",
]
