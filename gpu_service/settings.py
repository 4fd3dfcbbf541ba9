"""Configuration of the GPU service (engine, HTTP server and queue worker) from the environment.

One class for the three faces, so a deployment sets one list of variables (documented in
gpu_service/README.md). Variable names are the field names in upper case, without a prefix
(``MODEL_ID``, ``MAX_BATCH``, ``GPU_QUEUE_URL``, ``IMAGES_BUCKET``); the AWS region and endpoint
come from boto3's own variables (``AWS_REGION``, ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_ID = "stabilityai/sd-turbo"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    # --- Engine -----------------------------------------------------------------------------
    model_id: str = Field(
        default=DEFAULT_MODEL_ID,
        description="Hugging Face hub id or local directory that from_pretrained loads.",
    )
    model_revision: str | None = Field(default=None, description="Hub revision (commit) to pin.")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto", description="auto: float16 on a GPU, float32 on the CPU."
    )
    scheduler: str | None = Field(
        default=None,
        description="A diffusers scheduler class name (e.g. EulerAncestralDiscreteScheduler); "
        "the model's own when unset.",
    )
    torch_compile: bool = Field(default=False, description="torch.compile the UNet at load.")
    torch_compile_mode: str = "default"
    channels_last: bool = False
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads torch's operators use in the engine's process; torch's own "
        "choice (the cores) when unset. On a GPU the host's threads matter little.",
    )
    warmup: bool = Field(default=True, description="Run one generation before reporting ready.")
    engine_process: bool = Field(
        default=True,
        description="The worker loads the model in a process of its own, so that its I/O "
        "threads never hold the interpreter the pipeline calls need (worker).",
    )

    default_width: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    default_height: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    # sd-turbo is distilled for 1 to 4 steps without classifier-free guidance.
    default_steps: int = Field(default=1, ge=1, le=150)
    default_guidance: float = Field(default=0.0, ge=0.0, le=30.0)
    max_steps: int = Field(default=50, ge=1, le=150)
    max_pixels: int = Field(
        default=1024 * 1024, ge=64 * 64, description="Largest width x height accepted."
    )

    # --- Batching (server and worker) -------------------------------------------------------
    max_batch: int = Field(default=8, ge=1, le=64, description="Images per pipeline call.")
    batch_wait_ms: float = Field(
        default=10.0, ge=0.0, le=1000.0, description="How long a request waits to join a batch."
    )
    max_queue: int = Field(
        default=32, ge=0, description="Requests waiting beyond this answer 503 (server)."
    )
    retry_after_seconds: int = Field(default=2, ge=1)

    # --- HTTP server ------------------------------------------------------------------------
    host: str = "0.0.0.0"  # noqa: S104 - a container listens on all its interfaces
    port: int = 8080

    # --- Queue worker -----------------------------------------------------------------------
    gpu_queue_url: str | None = Field(default=None, description="SQS GPU job queue (worker).")
    images_bucket: str | None = Field(
        default=None, description="Bucket for jobs whose job.bucket is null (worker)."
    )
    receive_wait_seconds: int = Field(default=20, ge=0, le=20)
    max_messages: int = Field(default=10, ge=1, le=10)
    visibility_timeout_seconds: int = Field(
        default=60,
        ge=1,
        le=43_200,
        description="Visibility given to received messages and re-extended while they are "
        "worked on: how long after a worker dies its jobs reappear for another worker.",
    )
    heartbeat_interval_seconds: float = Field(
        default=20.0,
        gt=0,
        description="Period of the visibility extension and of SendTaskHeartbeat (which tells "
        "the worker that a task has ended); at most a third of the visibility timeout.",
    )
    error_backoff_seconds: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="Pause after a failed poll round; doubles with each failure in a row, up "
        "to 30 s.",
    )
    liveness_file: str | None = Field(
        default=None, description="A file the worker touches after each poll (liveness probe)."
    )
    store_threads: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Threads that encode PNGs and put them in S3 beside the pipeline calls.",
    )
    call_threads: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Threads for the worker's Step Functions calls (task answers, heartbeats), "
        "which have no batch form: they are made side by side.",
    )
    recheck_after_seconds: float = Field(
        default=2.0,
        ge=0,
        description="A job whose task was last found alive longer ago than this, and which "
        "waited through a pipeline call, is checked again before its own call (a heartbeat "
        "sent while the earlier call runs): a cancel that lands later costs at most that call.",
    )
    ahead_batches: float = Field(
        default=2.0,
        ge=1,
        le=16,
        description="Images received ahead of the engine, in batches of MAX_BATCH: the next "
        "call is always ready, and no more is held than the queue can give another worker.",
    )
    behind_batches: float = Field(
        default=4.0,
        ge=1,
        le=64,
        description="Images made but not yet stored and reported, in batches of MAX_BATCH, "
        "past which the worker receives no more; at twice it, the engine waits for the stores.",
    )
    # --- Progress events (worker) -------------------------------------------------------------
    event_bus_name: str | None = Field(
        default=None,
        description='EventBridge bus for the jobs\' "Image Generation Progress" events; unset '
        "or empty: no progress events.",
    )
    event_source: str = Field(
        default="imagegen", min_length=1, description="The events' source (the stack's own)."
    )
    progress_reporting: bool = Field(
        default=True,
        description="Publish progress events (when EVENT_BUS_NAME is set); false turns them off.",
    )
    progress_interval_seconds: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="Least time between two step events of one job (the last step of a call "
        "and the stage changes are always sent).",
    )

    gpu_price_per_hour_usd: float = Field(
        default=1.006,
        ge=0,
        description="What an hour of this GPU costs, for the images' costs (measured seconds x "
        "this / 3600 / images in the call). Default: an on-demand g5.xlarge in us-east-1, "
        "imagegen_common.pricing.GPU_INSTANCE_PRICE (a test holds the two equal).",
    )

    @property
    def reports_progress(self) -> bool:
        """Whether the worker publishes progress events: on, and a bus to put them on."""
        return self.progress_reporting and bool(self.event_bus_name)

    @model_validator(mode="after")
    def _extension_well_within_visibility(self) -> Settings:
        # A message whose visibility runs out while its job is worked on is taken by another
        # worker. With the extension at most every third of the timeout, one failed or late
        # extension still leaves the message hidden until the next one.
        if self.heartbeat_interval_seconds * 3 > self.visibility_timeout_seconds:
            raise ValueError(
                f"HEARTBEAT_INTERVAL_SECONDS ({self.heartbeat_interval_seconds:g}) must be at "
                f"most a third of VISIBILITY_TIMEOUT_SECONDS "
                f"({self.visibility_timeout_seconds}), so a message in work stays hidden "
                "through one failed visibility extension"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
