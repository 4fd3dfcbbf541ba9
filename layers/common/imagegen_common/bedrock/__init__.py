"""Bedrock model adapters: one request shape in, each model family's body out, one image back.

``generate_with_bedrock`` is the one call a Lambda function needs; ``adapter_for`` gives the
per-model checks (allowed sizes, prompt length, seed range) and the real output size. The models
we can call are listed once, in ``registry``; each family module cites the documentation its
fields and limits come from.
"""

from imagegen_common.bedrock.base import GeneratedImage, ModelAdapter
from imagegen_common.bedrock.client import error_from_client_error, generate_with_bedrock
from imagegen_common.bedrock.registry import (
    ADAPTERS,
    DEFAULT_MODEL_ID,
    KNOWN_MODEL_IDS,
    SD35_LARGE,
    STABLE_IMAGE_CORE,
    STABLE_IMAGE_ULTRA,
    adapter_for,
)

__all__ = [
    "ADAPTERS",
    "DEFAULT_MODEL_ID",
    "KNOWN_MODEL_IDS",
    "SD35_LARGE",
    "STABLE_IMAGE_CORE",
    "STABLE_IMAGE_ULTRA",
    "GeneratedImage",
    "ModelAdapter",
    "adapter_for",
    "error_from_client_error",
    "generate_with_bedrock",
]
