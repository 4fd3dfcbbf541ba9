"""Turning a request into a runnable job: defaults, the deployment's rules and the model's limits.

The API calls :func:`resolve_request` to answer 422 before a workflow starts; the "Validate Prompt"
state calls :func:`plan_job` again on the workflow's own input (an execution can be started without
the API) and adds the content policy, seeds and S3 keys.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, NamedTuple

from pydantic import ValidationError

from imagegen_common.bedrock import adapter_for
from imagegen_common.controls import check_controls, resolve_controls
from imagegen_common.errors import InvalidPromptError
from imagegen_common.models import (
    MAX_SEED,
    AspectRatio,
    Backend,
    GenerateRequest,
    GenerationControls,
    ImageSlot,
    Job,
)
from imagegen_common.settings import GenerationSettings

_SIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_size(size: str) -> tuple[int, int]:
    match = _SIZE.match(size.strip())
    if not match:
        raise ValueError(f"size {size!r} is not WIDTHxHEIGHT")
    return int(match.group(1)), int(match.group(2))


class ResolvedRequest(NamedTuple):
    """What a request runs with after defaults and allow-lists."""

    backend: Backend
    model_id: str | None
    width: int
    height: int
    controls: GenerationControls


def resolve_request(request: GenerateRequest, settings: GenerationSettings) -> ResolvedRequest:
    """The backend, model, size and controls a request runs with, after defaults and
    allow-lists.

    Raises :class:`InvalidPromptError` naming the field when the request asks for a model, a
    size or a control that this deployment (or the model) does not allow or take.
    """
    backend = request.backend or settings.default_backend
    model_id: str | None = None
    if backend is Backend.BEDROCK:
        model_id = request.model_id or settings.default_model_id
        if model_id not in settings.allowed_model_ids:
            raise InvalidPromptError(
                f"model_id {model_id!r} is not allowed here; allowed: "
                + ", ".join(settings.allowed_model_ids),
                field="model_id",
            )
    elif request.model_id is not None:
        raise InvalidPromptError(
            "model_id applies to the bedrock backend only; the gpu backend runs its own model",
            field="model_id",
        )
    check_controls(request, backend, model_id, settings)

    if request.aspect_ratio is not None:
        # Only Bedrock models take a ratio (check_controls): the size is the model's own for it.
        assert model_id is not None
        width, height = adapter_for(model_id).size_of_aspect_ratio(request.aspect_ratio)
    elif request.width is not None and request.height is not None:
        width, height = request.width, request.height
        size = f"{width}x{height}"
        if size not in settings.allowed_sizes:
            raise InvalidPromptError(
                f"size {size} is not allowed here; allowed: " + ", ".join(settings.allowed_sizes),
                field="width",
            )
    else:
        default = settings.default_size if backend is Backend.BEDROCK else settings.gpu_default_size
        width, height = parse_size(default)

    aspect_ratio: AspectRatio | None = None
    if model_id is not None:
        adapter = adapter_for(model_id)
        adapter.check_request(request.prompt, request.negative_prompt, width, height)
        aspect_ratio = AspectRatio(adapter.aspect_ratio(width, height))
    controls = resolve_controls(request, backend, aspect_ratio, settings)
    return ResolvedRequest(backend, model_id, width, height, controls)


def parse_job(payload: Any) -> Job:
    """The workflow's ``$.job``; a malformed one is an invalid prompt that names its fields."""
    try:
        return Job.model_validate(payload)
    except ValidationError as error:
        fields = ", ".join(".".join(str(part) for part in item["loc"]) for item in error.errors())
        raise InvalidPromptError(
            f"the job is malformed: {fields or 'job'}; {error.errors()[0]['msg']}",
            field=fields or "job",
        ) from error


def check_content_policy(request: GenerateRequest, settings: GenerationSettings) -> None:
    """Reject prompts that contain a term of the deployment's deny-list (case-insensitive)."""
    prompt = request.prompt.casefold()
    for term in settings.blocked_prompt_terms:
        if term.casefold() in prompt:
            raise InvalidPromptError(f"prompt contains the blocked term {term!r}", field="prompt")


def plan_job(job: Job, settings: GenerationSettings) -> Job:
    """The job as the workflow runs it: resolved, checked, one slot per image with seed and key."""
    check_content_policy(job.request, settings)
    backend, model_id, width, height, controls = resolve_request(job.request, settings)
    first_seed = job.request.seed if job.request.seed is not None else _random_seed()
    images = [
        ImageSlot(
            index=index,
            seed=(first_seed + index) % (MAX_SEED + 1),
            s3_key=f"images/{job.job_id}/{index}.{controls.output_format.extension}",
        )
        for index in range(job.request.num_images)
    ]
    return job.model_copy(
        update={
            "backend": backend,
            "model_id": model_id,
            "width": width,
            "height": height,
            "fallback_backend": settings.fallback_backend,
            "bucket": settings.images_bucket,
            "images": images,
            "controls": controls,
            "gpu_timeout_seconds": settings.gpu_job_timeout_seconds,
        }
    )


def _random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1 - 3)
