"""The diffusers scheduler behind each ``Scheduler`` a request may choose (the allow-list is
the domain model's enum; this is what the GPU service runs for each value)."""

from __future__ import annotations

from typing import Final

from imagegen_common.models import Scheduler

SCHEDULER_CLASSES: Final[dict[Scheduler, str]] = {
    Scheduler.EULER: "EulerDiscreteScheduler",
    Scheduler.EULER_ANCESTRAL: "EulerAncestralDiscreteScheduler",
    Scheduler.DPMPP_2M: "DPMSolverMultistepScheduler",
    Scheduler.DDIM: "DDIMScheduler",
    Scheduler.UNIPC: "UniPCMultistepScheduler",
}
"""Every value but ``default`` (the pipeline's own scheduler), by its diffusers class name."""


def scheduler_class_name(name: str) -> str:
    """The diffusers class of a ``Scheduler`` value; ValueError for one not allowed."""
    try:
        return SCHEDULER_CLASSES[Scheduler(name)]
    except (ValueError, KeyError):
        allowed = ", ".join(scheduler.value for scheduler in SCHEDULER_CLASSES)
        raise ValueError(f"scheduler {name!r} is not one of {allowed}") from None
