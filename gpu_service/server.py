"""The HTTP face: ``POST /generate`` → image/png, with health, readiness and Prometheus metrics.

The model loads in the background once the lifespan starts, so ``/healthz`` answers at once
(the process is up) while ``/readyz`` answers 503 until the model is loaded and warmed up: a
load balancer or Kubernetes sends traffic only then, and a slow model download never trips the
liveness probe.

    python -m gpu_service.server          # or: uvicorn --factory gpu_service.server:create_app
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field

from gpu_service.batching import BatchRecord, MicroBatcher, QueueFullError
from gpu_service.cli import settings_from_command_line
from gpu_service.engine import Engine, load_ready_engine
from gpu_service.image_specs import ImageSpec
from gpu_service.settings import Settings, get_settings
from imagegen_common.models import MAX_SEED, Dimension, NegativePrompt, Prompt, Seed

logger = logging.getLogger(__name__)

EngineLoader = Callable[[Settings], Engine]


class ImageRequest(BaseModel):
    """Body of ``POST /generate``. Unset fields take the deployment's defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt = Field(description="What to draw; 1 to 1000 characters after trimming.")
    negative_prompt: NegativePrompt | None = Field(default=None, description="What to avoid.")
    width: Dimension | None = Field(default=None, description="Pixels, multiple of 8.")
    height: Dimension | None = Field(default=None, description="Pixels, multiple of 8.")
    steps: int | None = Field(default=None, ge=1, le=150, description="Denoising steps.")
    guidance: float | None = Field(
        default=None, ge=0.0, le=30.0, description="Classifier-free guidance scale."
    )
    seed: Seed | None = Field(default=None, description="Random when unset; see X-Seed.")


class Metrics:
    """Prometheus metrics of one app, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imagegen_gpu_requests",
            "Generate requests by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imagegen_gpu_request_seconds",
            "Time from receiving a generate request to its image.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "imagegen_gpu_batch_size",
            "Images per pipeline call.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "imagegen_gpu_batch_seconds",
            "Time of one pipeline call.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "imagegen_gpu_queue_depth", "Requests waiting for a batch.", registry=self.registry
        )
        self.ready = Gauge(
            "imagegen_gpu_ready", "1 once the model is warm.", registry=self.registry
        )
        self.gpu_memory = Gauge(
            "imagegen_gpu_memory_bytes",
            "GPU memory allocated by torch (0 on CPU).",
            ["kind"],
            registry=self.registry,
        )

    def record_batch(self, record: BatchRecord) -> None:
        self.batch_size.observe(record.size)
        self.batch_seconds.observe(record.seconds)


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine | None = None
    batcher: MicroBatcher | None = None
    ready: bool = False
    load_error: str | None = None


async def _start_engine(state: ServiceState, loader: EngineLoader) -> None:
    try:
        engine = await asyncio.to_thread(load_ready_engine, state.settings, loader)
    except Exception as error:
        logger.exception("model load failed")
        state.load_error = f"{type(error).__name__}: {error}"
        return
    batcher = MicroBatcher(
        engine.generate_async,
        max_batch=state.settings.max_batch,
        max_wait=state.settings.batch_wait_ms / 1000,
        max_queue=state.settings.max_queue,
        on_batch=state.metrics.record_batch,
    )
    batcher.start()
    state.engine, state.batcher, state.ready = engine, batcher, True
    state.metrics.ready.set(1)
    state.metrics.queue_depth.set_function(lambda: batcher.queue_depth)
    state.metrics.gpu_memory.labels("allocated").set_function(lambda: engine.gpu_memory_bytes()[0])
    state.metrics.gpu_memory.labels("peak").set_function(lambda: engine.gpu_memory_bytes()[1])
    logger.info("ready: %s", engine.model_id)


def _field_error(field_name: str, message: str, value: Any) -> JSONResponse:
    """A 422 shaped like FastAPI's own validation errors, naming the field."""
    detail = [{"type": "value_error", "loc": ["body", field_name], "msg": message, "input": value}]
    return JSONResponse(status_code=422, content={"detail": detail})


def create_app(
    settings: Settings | None = None, engine_loader: EngineLoader | None = None
) -> FastAPI:
    """The FastAPI app. ``engine_loader`` (default ``Engine.load``) runs in a thread at startup."""
    service = ServiceState(settings or get_settings())
    loader: EngineLoader = engine_loader or Engine.load

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_start_engine(service, loader), name="load-model")
        yield
        loading.cancel()
        if service.batcher is not None:
            await service.batcher.stop()

    app = FastAPI(title="imagegen GPU service", version="1.0", lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def count_invalid(request: Request, error: RequestValidationError) -> Response:
        service.metrics.requests.labels("invalid").inc()
        return await request_validation_exception_handler(request, error)

    def unavailable(outcome: str, message: str) -> JSONResponse:
        service.metrics.requests.labels(outcome).inc()
        retry_after = str(service.settings.retry_after_seconds)
        return JSONResponse(
            status_code=503, content={"detail": message}, headers={"Retry-After": retry_after}
        )

    @app.post(
        "/generate",
        response_class=Response,
        summary="Generate one image",
        responses={
            200: {"content": {"image/png": {}}, "description": "The image; X-Seed: its seed."},
            422: {"description": "Invalid body; the detail names the field."},
            503: {"description": "Not ready or overloaded; retry after Retry-After seconds."},
        },
    )
    async def generate(body: ImageRequest) -> Response:
        settings = service.settings
        steps = body.steps if body.steps is not None else settings.default_steps
        width = body.width if body.width is not None else settings.default_width
        height = body.height if body.height is not None else settings.default_height
        if steps > settings.max_steps:
            service.metrics.requests.labels("invalid").inc()
            return _field_error("steps", f"at most {settings.max_steps} steps", steps)
        if width * height > settings.max_pixels:
            service.metrics.requests.labels("invalid").inc()
            return _field_error(
                "width", f"width x height must be at most {settings.max_pixels} pixels", width
            )
        if not service.ready or service.batcher is None:
            return unavailable("not_ready", "model not loaded yet")
        seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
        spec = ImageSpec(
            prompt=body.prompt,
            negative_prompt=body.negative_prompt,
            seed=seed,
            width=width,
            height=height,
            steps=steps,
            guidance=body.guidance if body.guidance is not None else settings.default_guidance,
        )
        started = time.perf_counter()
        try:
            png = await service.batcher.submit(spec)
        except QueueFullError:
            return unavailable("overloaded", "too many requests waiting; retry later")
        service.metrics.latency.observe(time.perf_counter() - started)
        service.metrics.requests.labels("ok").inc()
        return Response(content=png, media_type="image/png", headers={"X-Seed": str(seed)})

    @app.get("/healthz", summary="The process is up (and the model did not fail to load)")
    async def healthz() -> JSONResponse:
        if service.load_error is not None:
            return JSONResponse(
                status_code=500, content={"status": "failed", "error": service.load_error}
            )
        return JSONResponse(content={"status": "ok"})

    @app.get("/readyz", summary="The model is loaded and warmed up")
    async def readyz() -> JSONResponse:
        if not service.ready:
            return JSONResponse(status_code=503, content={"status": "loading"})
        return JSONResponse(content={"status": "ready", "model_id": service.settings.model_id})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    settings = settings_from_command_line("Serve POST /generate (see the README).", argv)
    # One process per GPU: the engine serialises pipeline calls, batching gives the concurrency.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, workers=1)


if __name__ == "__main__":
    main()
