"""Which generation controls each backend and model takes, and the values a job runs with.

A request field that the chosen model does not take is refused (422 naming the field and the
models that take it), never silently ignored. The Bedrock models say what they take on their
adapters (``bedrock``'s ``takes`` and ``output_formats``); the GPU service's limits and defaults
are the deployment's (``GenerationSettings``: GpuDefaultSteps, GpuMaxSteps,
GpuDefaultGuidanceScale), the same values its workers are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from imagegen_common.bedrock import adapter_for
from imagegen_common.errors import InvalidPromptError
from imagegen_common.models import (
    DEFAULT_OUTPUT_QUALITY,
    AspectRatio,
    Backend,
    GenerateRequest,
    GenerationControls,
    OutputFormat,
    Scheduler,
)
from imagegen_common.settings import GenerationSettings

CONTROL_FIELDS: Final = ("steps", "guidance_scale", "scheduler", "aspect_ratio", "output_quality")
"""The request fields a model may or may not take; output_format is checked by its value."""

GPU_TAKES: Final = frozenset({"steps", "guidance_scale", "scheduler", "output_quality"})
GPU_OUTPUT_FORMATS: Final = tuple(OutputFormat)


@dataclass(frozen=True)
class ModelControls:
    """What one model takes beyond the prompt, size, seed and count."""

    name: str = ""
    """``gpu``, or a Bedrock model id."""
    takes: frozenset[str] = frozenset()
    output_formats: tuple[OutputFormat, ...] = (OutputFormat.PNG,)


def controls_of(backend: Backend, model_id: str | None) -> ModelControls:
    if backend is Backend.GPU:
        return ModelControls("gpu", GPU_TAKES, GPU_OUTPUT_FORMATS)
    assert model_id is not None, "a Bedrock job names its model"
    adapter = adapter_for(model_id)
    return ModelControls(model_id, adapter.takes, adapter.output_formats)


def _offered(settings: GenerationSettings) -> list[ModelControls]:
    return [controls_of(Backend.GPU, None)] + [
        controls_of(Backend.BEDROCK, model_id) for model_id in settings.allowed_model_ids
    ]


def check_controls(
    request: GenerateRequest, backend: Backend, model_id: str | None, settings: GenerationSettings
) -> ModelControls:
    """The chosen model's controls; InvalidPromptError naming the first field it does not take,
    with the models of this deployment that do."""
    chosen = controls_of(backend, model_id)
    for field in CONTROL_FIELDS:
        if getattr(request, field) is not None and field not in chosen.takes:
            takers = [offer.name for offer in _offered(settings) if field in offer.takes]
            raise InvalidPromptError(
                f"{field} is not taken by {chosen.name}; models that take it: "
                + (", ".join(takers) or "none here"),
                field=field,
            )
    wanted = request.output_format or OutputFormat.PNG
    if wanted not in chosen.output_formats:
        takers = [offer.name for offer in _offered(settings) if wanted in offer.output_formats]
        raise InvalidPromptError(
            f"output_format {wanted.value} is not made by {chosen.name}, which makes "
            + ", ".join(fmt.value for fmt in chosen.output_formats)
            + "; models that make it: "
            + ", ".join(takers),
            field="output_format",
        )
    if (
        backend is Backend.GPU
        and request.steps is not None
        and request.steps > settings.gpu_max_steps
    ):
        raise InvalidPromptError(
            f"steps {request.steps} is more than this deployment's GPU allows "
            f"({settings.gpu_max_steps}, GpuMaxSteps)",
            field="steps",
        )
    return chosen


def resolve_controls(
    request: GenerateRequest,
    backend: Backend,
    aspect_ratio: AspectRatio | None,
    settings: GenerationSettings,
) -> GenerationControls:
    """The controls the job runs with, defaults included (``check_controls`` has passed)."""
    output_format = request.output_format or OutputFormat.PNG
    quality = (request.output_quality or DEFAULT_OUTPUT_QUALITY) if output_format.lossy else None
    if backend is Backend.GPU:
        return GenerationControls(
            output_format=output_format,
            output_quality=quality,
            steps=request.steps or settings.gpu_default_steps,
            guidance_scale=(
                request.guidance_scale
                if request.guidance_scale is not None
                else settings.gpu_default_guidance_scale
            ),
            scheduler=request.scheduler or Scheduler.DEFAULT,
        )
    return GenerationControls(
        output_format=output_format, output_quality=quality, aspect_ratio=aspect_ratio
    )
