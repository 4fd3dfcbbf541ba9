"""The engine: one diffusers text-to-image pipeline, loaded once, generating batches of images.

Both faces of the service (the HTTP server and the queue worker) hand it lists of compatible
``ImageSpec`` (same size, steps, guidance and scheduler) and get PNG bytes back, one per spec,
in order.
Each image has its own prompt, negative prompt and seed: the seed drives a generator of its own,
so an image does not depend on which other requests shared its batch (up to the GPU's
floating-point reordering). A caller may observe the denoising steps of a call (``on_step``,
through diffusers' ``callback_on_step_end``): the queue worker reports job progress with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from gpu_service.image_specs import (
    BatchKey,
    DenoisingStep,
    ImageSpec,
    StepObserver,
    encode_png,
    shared_batch_key,
)
from gpu_service.schedulers import scheduler_class_name
from gpu_service.settings import Settings

logger = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
T = TypeVar("T")


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("DEVICE=cuda but torch sees no CUDA device")
    return requested


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    if requested == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return _DTYPES[requested]


class Engine:
    """A loaded pipeline and the one thread that calls it.

    The queue worker calls ``generate`` from its own thread; the HTTP server's micro-batcher
    awaits ``generate_async``. Either way the engine's thread is the only one that runs the
    pipeline, and the only thread pool between a request and the GPU.

    Build it with ``Engine.load(settings)`` (from ``settings.model_id``) or, for a pipeline built
    in memory (the benchmark's random-weight SD 1.5), ``Engine.from_pipeline(...)``.
    """

    def __init__(self, pipeline: Any, *, model_id: str, device: str, dtype: torch.dtype) -> None:
        self.pipeline = pipeline
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        # Every pipeline call runs on this one thread: calls are serialised (pipelines are not
        # reentrant), and on the CPU only one OpenMP thread team exists (a second team in
        # another thread made each call ~1.8x slower on 2 cores, measured).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._own_scheduler = getattr(pipeline, "scheduler", None)
        self._schedulers: dict[str, Any] = {}

    # 1. Load ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, settings: Settings) -> Engine:
        device = resolve_device(settings.device)  # before diffusers' import: seconds
        dtype = resolve_dtype(settings.dtype, device)
        from diffusers import AutoPipelineForText2Image

        started = time.perf_counter()
        pipeline = AutoPipelineForText2Image.from_pretrained(
            settings.model_id, revision=settings.model_revision, dtype=dtype
        )
        logger.info(
            "loaded %s (%s) on %s as %s in %.1f s",
            settings.model_id,
            type(pipeline).__name__,
            device,
            dtype,
            time.perf_counter() - started,
        )
        return cls.from_pipeline(pipeline, settings, model_id=settings.model_id)

    @classmethod
    def from_pipeline(cls, pipeline: Any, settings: Settings, *, model_id: str) -> Engine:
        """Move a pipeline to the configured device and dtype and apply the speed settings."""
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)  # process-wide: the engine's process
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        pipeline.to(device=device, dtype=dtype)
        pipeline.set_progress_bar_config(disable=True)
        if settings.scheduler:
            pipeline.scheduler = _scheduler_from_name(settings.scheduler, pipeline.scheduler)
        _use_sdpa(pipeline)
        if settings.channels_last:
            for module in _denoiser_and_vae(pipeline):
                module.to(memory_format=torch.channels_last)
        if settings.torch_compile:
            # Compiles lazily on the first call (the warm-up); each new size compiles again.
            pipeline.unet = torch.compile(pipeline.unet, mode=settings.torch_compile_mode)
        return cls(pipeline, model_id=model_id, device=device, dtype=dtype)

    # 2. Generate --------------------------------------------------------------------------------
    def generate(
        self, specs: Sequence[ImageSpec], on_step: StepObserver | None = None
    ) -> list[bytes]:
        """PNG bytes for each spec, in order, from one pipeline call; blocks the calling thread.
        ``on_step`` (if given) observes each denoising step of the call."""
        images = self.generate_images(specs, on_step)
        return [encode_png(image) for image in images]  # on the caller's thread: the GPU moves on

    async def generate_async(self, specs: Sequence[ImageSpec]) -> list[bytes]:
        """``generate`` for a coroutine: the pipeline call and the PNG encoding run on the
        engine's thread, so the event loop never blocks and no second thread pool is needed."""
        if not specs:
            return []
        key = shared_batch_key(specs)
        return await asyncio.wrap_future(self._executor.submit(self._generate_pngs, specs, key))

    def generate_images(
        self, specs: Sequence[ImageSpec], on_step: StepObserver | None = None
    ) -> list[Any]:
        """PIL images for each spec, in order, from one pipeline call."""
        if not specs:
            return []
        return self.run(self._call_pipeline, specs, shared_batch_key(specs), on_step)

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the engine's thread, after the calls before it."""
        return self._executor.submit(function, *args).result()

    def _generate_pngs(self, specs: Sequence[ImageSpec], key: BatchKey) -> list[bytes]:
        return [encode_png(image) for image in self._call_pipeline(specs, key)]

    def _call_pipeline(
        self, specs: Sequence[ImageSpec], key: BatchKey, on_step: StepObserver | None = None
    ) -> list[Any]:
        # CPU generators give the same latents for a seed on every device.
        generators = [torch.Generator(device="cpu").manual_seed(spec.seed) for spec in specs]
        observed: dict[str, Any] = {}
        if on_step is not None:
            observed["callback_on_step_end"] = _StepCallback(on_step, key.steps)
        scheduler = self._scheduler(key.scheduler)
        if scheduler is not None and getattr(self.pipeline, "scheduler", None) is not scheduler:
            self.pipeline.scheduler = scheduler
        output = self.pipeline(
            prompt=[spec.prompt for spec in specs],
            negative_prompt=[spec.negative_prompt or "" for spec in specs],
            width=key.width,
            height=key.height,
            num_inference_steps=key.steps,
            guidance_scale=key.guidance,
            generator=generators,
            output_type="pil",
            **observed,
        )
        return list(output.images)

    def _scheduler(self, name: str | None) -> Any:
        """The scheduler a call runs with: the pipeline's own for None, else the allow-listed
        one of ``name`` (``schedulers.SCHEDULER_CLASSES``), made once from the pipeline's
        config and kept. Calls run one at a time on the engine's thread, so one instance each
        is enough."""
        if name is None:
            return self._own_scheduler
        if name not in self._schedulers:
            self._schedulers[name] = _scheduler_from_name(
                scheduler_class_name(name), self._own_scheduler
            )
        return self._schedulers[name]

    def close(self) -> None:
        """Wait for the calls in hand and stop the engine's thread."""
        self._executor.shutdown(wait=True)

    def warm_up(self, width: int, height: int, steps: int, guidance: float) -> None:
        started = time.perf_counter()
        self.generate([ImageSpec("warm-up", 0, width, height, steps, guidance)])
        logger.info("warmed up in %.1f s", time.perf_counter() - started)

    def gpu_memory_bytes(self) -> tuple[int, int]:
        """(allocated, peak allocated) on the GPU; zeros on the CPU."""
        if self.device != "cuda":
            return 0, 0
        return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()


class _StepCallback:
    """diffusers' ``callback_on_step_end`` (``(pipeline, step_index, timestep, callback_kwargs)
    -> callback_kwargs``) turned into ``DenoisingStep`` for an observer that cannot break the
    call: it returns the tensors unchanged whatever the observer does, and logs what it raises
    (the first time with its stack, then counted)."""

    def __init__(self, observer: StepObserver, requested_steps: int) -> None:
        self._observer = observer
        self._requested_steps = requested_steps
        self._failures = 0

    def __call__(
        self, pipeline: Any, step_index: int, _timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        # The scheduler decides how many steps run (some add or drop one); the pipeline knows.
        steps = getattr(pipeline, "num_timesteps", None) or self._requested_steps
        try:
            self._observer(DenoisingStep(step_index + 1, int(steps)))
        except Exception:
            self._failures += 1
            if self._failures == 1:
                logger.exception("a step observer failed; generation goes on")
            else:
                logger.debug("a step observer failed again (%d times)", self._failures)
        return callback_kwargs


def _scheduler_from_name(name: str, current: Any) -> Any:
    import diffusers

    scheduler_class = getattr(diffusers, name, None)
    if not (
        isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)
    ):
        raise ValueError(f"SCHEDULER={name!r} is not a diffusers scheduler class")
    scheduler: Any = scheduler_class  # diffusers is not type-checked (pyproject.toml)
    return scheduler.from_config(current.config)


def _denoiser_and_vae(pipeline: Any) -> list[torch.nn.Module]:
    return [
        module
        for module in (getattr(pipeline, "unet", None), getattr(pipeline, "vae", None))
        if isinstance(module, torch.nn.Module)
    ]


def _use_sdpa(pipeline: Any) -> None:
    """PyTorch's fused scaled-dot-product attention in the UNet and the VAE."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    for module in _denoiser_and_vae(pipeline):
        set_processor = getattr(module, "set_attn_processor", None)
        if set_processor is not None and getattr(module, "attn_processors", None):
            set_processor(AttnProcessor2_0())


def load_ready_engine(
    settings: Settings, loader: Callable[[Settings], Engine] | None = None
) -> Engine:
    """Load the model with ``loader`` (``Engine.load`` by default) and, if ``settings.warmup``,
    run one generation at the default settings, so the first real request pays no warm-up."""
    engine = (loader or Engine.load)(settings)
    if settings.warmup:
        engine.warm_up(
            settings.default_width,
            settings.default_height,
            settings.default_steps,
            settings.default_guidance,
        )
    return engine
