"""What this deployment offers, as ``GET /models`` answers it: each backend, its models, the sizes
it takes and the defaults, read from the API's own settings (the template's parameters) and the
Bedrock registry, so that a client (the playground) builds its form from the deployment itself."""

from __future__ import annotations

from imagegen_common.bedrock import adapter_for
from imagegen_common.controls import controls_of
from imagegen_common.errors import InvalidPromptError
from imagegen_common.models import (
    AspectRatio,
    Backend,
    BackendOffer,
    ModelCatalogue,
    ModelOffer,
    Scheduler,
)
from imagegen_common.settings import ApiSettings

GPU_MODEL_UNKNOWN = "gpu"
"""What the GPU backend's model is called when the API is not told (GPU_MODEL_ID unset)."""


def model_catalogue(settings: ApiSettings) -> ModelCatalogue:
    return ModelCatalogue(backends=[_bedrock_offer(settings), _gpu_offer(settings)])


def _bedrock_offer(settings: ApiSettings) -> BackendOffer:
    models = []
    sizes: list[str] = []
    for model_id in settings.allowed_model_ids:
        adapter = adapter_for(model_id)
        controls = controls_of(Backend.BEDROCK, model_id)
        models.append(
            ModelOffer(
                model_id=model_id,
                name=adapter.model_name,
                default=model_id == settings.default_model_id,
                takes=sorted(controls.takes),
                output_formats=list(controls.output_formats),
                aspect_ratios=list(AspectRatio) if "aspect_ratio" in controls.takes else [],
            )
        )
        sizes += [size for size in _sizes_taken(settings, model_id) if size not in sizes]
    return BackendOffer(
        backend=Backend.BEDROCK,
        default=settings.default_backend is Backend.BEDROCK,
        models=models,
        sizes=sizes,
        default_size=settings.default_size,
    )


def _gpu_offer(settings: ApiSettings) -> BackendOffer:
    model_id = settings.gpu_model_id or GPU_MODEL_UNKNOWN
    controls = controls_of(Backend.GPU, None)
    model = ModelOffer(
        model_id=model_id,
        name=model_id,
        default=True,
        takes=sorted(controls.takes),
        output_formats=list(controls.output_formats),
        schedulers=list(Scheduler),
        default_steps=settings.gpu_default_steps,
        max_steps=settings.gpu_max_steps,
        default_guidance_scale=settings.gpu_default_guidance_scale,
    )
    return BackendOffer(
        backend=Backend.GPU,
        default=settings.default_backend is Backend.GPU,
        models=[model],
        sizes=list(settings.allowed_sizes),
        default_size=settings.gpu_default_size,
    )


def _sizes_taken(settings: ApiSettings, model_id: str) -> list[str]:
    """The allowed sizes a Bedrock model takes: Stability's models take an aspect ratio, so a
    size without one of theirs is refused (``resolve_request`` answers 422 for it)."""
    from imagegen_common.jobs import parse_size

    taken = []
    for size in settings.allowed_sizes:
        width, height = parse_size(size)
        try:
            adapter_for(model_id).check_request("a", None, width, height)
        except InvalidPromptError:
            continue
        taken.append(size)
    return taken
