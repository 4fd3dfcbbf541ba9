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

    @property
    def batch_key(self) -> BatchKey:
        return BatchKey(self.width, self.height, self.steps, self.guidance)


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
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
