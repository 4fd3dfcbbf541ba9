"""What every model adapter offers: request checks, the request body, the parsed response.

One :class:`ModelAdapter` per model family turns our request (prompt, negative prompt, width,
height, seed) into that family's ``InvokeModel`` body and its response into a
:class:`GeneratedImage`. Checks run before the call so that a request the model would refuse
fails as :class:`~imagegen_common.errors.InvalidPromptError` naming the field and the rule,
and never costs an invocation.
"""

from __future__ import annotations

import base64
import binascii
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from imagegen_common.errors import InvalidPromptError, ModelError
from imagegen_common.image_files import read_image_header
from imagegen_common.models import AspectRatio, OutputFormat


@dataclass(frozen=True)
class GeneratedImage:
    """One image a model returned; format, ``width`` and ``height`` are read from its header."""

    data: bytes
    format: OutputFormat
    seed: int | None
    width: int
    height: int

    @classmethod
    def from_base64(
        cls, data: str, seed: int | None, model_id: str, expected: OutputFormat
    ) -> GeneratedImage:
        """Decode a base64 image from a model response; an answer that is not an image of the
        format asked for is a ModelError."""
        try:
            image = base64.b64decode(data, validate=True)
            header = read_image_header(image)
        except (binascii.Error, ValueError) as e:
            raise ModelError(f"{model_id} returned an image that cannot be read: {e}") from e
        if header.format is not expected:
            raise ModelError(
                f"{model_id} returned a {header.format.value} image; {expected.value} was asked"
            )
        return cls(
            data=image, format=header.format, seed=seed, width=header.width, height=header.height
        )


class ModelAdapter(ABC):
    """The request/response mapping of one Bedrock model, by its family's rules.

    ``model_id`` and ``model_name`` are Bedrock's (``GetFoundationModel``'s ``modelId`` and
    ``modelName``); ``provider`` its ``providerName``.
    """

    family: ClassVar[str]
    provider: ClassVar[str]
    max_prompt_chars: ClassVar[int]
    max_negative_prompt_chars: ClassVar[int]
    min_seed: ClassVar[int] = 0
    max_seed: ClassVar[int]
    takes: ClassVar[frozenset[str]] = frozenset()
    """The generation controls (``imagegen_common.controls.CONTROL_FIELDS``) the model takes."""
    output_formats: ClassVar[tuple[OutputFormat, ...]] = (OutputFormat.PNG,)

    def __init__(self, model_id: str, model_name: str) -> None:
        self.model_id = model_id
        self.model_name = model_name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_id!r}, {self.model_name!r})"

    # -- checks -------------------------------------------------------------------------------

    def check_request(
        self, prompt: str, negative_prompt: str | None, width: int, height: int
    ) -> None:
        """Raise InvalidPromptError if the model would refuse this prompt or size."""
        self._check_prompt(prompt, negative_prompt)
        self._check_size(width, height)

    def check_seed(self, seed: int) -> None:
        """Raise InvalidPromptError(field="seed") if the model does not accept ``seed``."""
        if not self.min_seed <= seed <= self.max_seed:
            raise InvalidPromptError(
                f"seed {seed} is out of range for {self.family}: it must be between "
                f"{self.min_seed} and {self.max_seed}",
                field="seed",
            )

    def _check_prompt(self, prompt: str, negative_prompt: str | None) -> None:
        if not prompt.strip():
            raise InvalidPromptError("prompt must not be empty", field="prompt")
        if len(prompt) > self.max_prompt_chars:
            raise InvalidPromptError(
                f"prompt is {len(prompt)} characters; {self.family} accepts at most "
                f"{self.max_prompt_chars}",
                field="prompt",
            )
        if negative_prompt and len(negative_prompt) > self.max_negative_prompt_chars:
            raise InvalidPromptError(
                f"negative_prompt is {len(negative_prompt)} characters; {self.family} accepts "
                f"at most {self.max_negative_prompt_chars}",
                field="negative_prompt",
            )

    @abstractmethod
    def _check_size(self, width: int, height: int) -> None: ...

    # -- mapping ------------------------------------------------------------------------------

    @abstractmethod
    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """The pixel size the model really returns when asked for ``width`` x ``height``."""

    @abstractmethod
    def aspect_ratio(self, width: int, height: int) -> str:
        """The aspect ratio the model is sent for ``width`` x ``height``."""

    @abstractmethod
    def size_of_aspect_ratio(self, ratio: AspectRatio) -> tuple[int, int]:
        """The pixel size the model returns for ``ratio``."""

    @abstractmethod
    def build_body(
        self,
        prompt: str,
        negative_prompt: str | None,
        width: int,
        height: int,
        seed: int,
        output_format: OutputFormat = OutputFormat.PNG,
    ) -> dict[str, Any]:
        """The ``InvokeModel`` body (a JSON object) for one image."""

    @abstractmethod
    def parse_response(
        self, body: dict[str, Any], output_format: OutputFormat = OutputFormat.PNG
    ) -> GeneratedImage:
        """The image in an ``InvokeModel`` response body; raises our typed errors otherwise."""


def size_label(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
