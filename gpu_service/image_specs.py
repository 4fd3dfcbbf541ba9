"""What an image to make is, and how images share a pipeline call: the engine's vocabulary,
without torch, so that the processes that only plan and ship images (the worker's I/O side, the
server's batcher) need not load it."""

from __future__ import annotations

import io
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class BatchKey(NamedTuple):
    """What images must share to go through one pipeline call."""

    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str | None = None
    """A ``Scheduler`` value of the domain model; None (or ``default``): the pipeline's own."""


class DenoisingStep(NamedTuple):
    """A denoising step of a pipeline call has just finished: ``step`` of ``steps`` (1-based)."""

    step: int
    steps: int


StepObserver = Callable[[DenoisingStep], None]
"""Called after each denoising step of a call, for every image of it at once: keep it quick
(the GPU waits), and let it hand slow work to another thread. What it raises is logged, never
passed on: an observer cannot break a generation."""


@dataclass(frozen=True)
class ImageSpec:
    """One image to make."""

    prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    negative_prompt: str | None = None
    scheduler: str | None = None

    @property
    def batch_key(self) -> BatchKey:
        scheduler = None if self.scheduler in (None, "default") else self.scheduler
        return BatchKey(self.width, self.height, self.steps, self.guidance, scheduler)


def plan_batches(items: Iterable[T], key: Callable[[T], Hashable], max_batch: int) -> list[list[T]]:
    """Group items with equal keys into batches of at most ``max_batch``, keeping their order."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return [
        group[start : start + max_batch]
        for group in groups.values()
        for start in range(0, len(group), max_batch)
    ]


def shared_batch_key(specs: Sequence[ImageSpec]) -> BatchKey:
    """The key every spec of one call shares; ValueError naming the first that differs."""
    key = specs[0].batch_key
    mismatched = [spec.batch_key for spec in specs if spec.batch_key != key]
    if mismatched:
        raise ValueError(f"specs of one batch must share {key}, got {mismatched[0]}")
    return key


def encode_png(image: Any) -> bytes:
    """A PIL image as PNG bytes."""
    return encode_image(image, "png")


def encode_image(image: Any, output_format: str, quality: int | None = None) -> bytes:
    """A PIL image as ``png``, ``jpeg`` or ``webp`` bytes (an ``OutputFormat`` value);
    ``quality`` (1 to 100) for the lossy two."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG")
    elif output_format in ("jpeg", "webp"):
        # JPEG holds no alpha; WebP keeps it.
        rgb = image.convert("RGB") if output_format == "jpeg" and image.mode != "RGB" else image
        rgb.save(buffer, format=output_format.upper(), quality=quality or 90)
    else:
        raise ValueError(f"unknown output format {output_format!r}")
    return buffer.getvalue()
