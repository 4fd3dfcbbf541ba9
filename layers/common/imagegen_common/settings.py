"""Configuration from environment variables, parsed once per cold start.

Each function builds the settings class it needs at import time, so a missing variable fails the
cold start with a message that names it (pydantic-settings reports e.g. ``IMAGES_BUCKET
Field required``) instead of failing later inside a request.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from imagegen_common.models import Backend, FallbackBackend
from imagegen_common.pricing import parse_price_overrides


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


# The model defaults come from the Bedrock registry, the one list of model ids. It is imported
# when a default is needed, so that functions whose settings name no model (ImagesSettings,
# EventsSettings) do not load the adapters at their cold start; deployed functions read both
# values from the environment.
def _default_model_id() -> str:
    from imagegen_common.bedrock.registry import DEFAULT_MODEL_ID

    return DEFAULT_MODEL_ID


def _known_model_ids() -> list[str]:
    from imagegen_common.bedrock.registry import KNOWN_MODEL_IDS

    return list(KNOWN_MODEL_IDS)


class ImagesSettings(BaseSettings):
    """Where images live and how long their pre-signed URLs last."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    images_bucket: str
    # 7 days is the most SigV4 allows; the template caps a deployment at the role session (1 h).
    presigned_url_ttl_seconds: int = Field(default=300, ge=1, le=604_800)


class GenerationSettings(ImagesSettings):
    """What a job may ask for, and the defaults it gets. Read by the API and the workflow."""

    default_backend: Backend = Backend.BEDROCK
    fallback_backend: FallbackBackend = FallbackBackend.NONE
    default_model_id: str = Field(default_factory=_default_model_id)
    allowed_model_ids: CsvList = Field(default_factory=_known_model_ids)
    allowed_sizes: CsvList = Field(
        default_factory=lambda: ["512x512", "768x768", "1024x1024", "1344x768", "768x1344"]
    )
    default_size: str = "1024x1024"
    gpu_default_size: str = "512x512"
    gpu_default_steps: int = Field(default=1, ge=1, le=150, description="GpuDefaultSteps.")
    gpu_max_steps: int = Field(default=50, ge=1, le=150, description="GpuMaxSteps.")
    gpu_default_guidance_scale: float = Field(
        default=0.0, ge=0, le=30, description="GpuDefaultGuidanceScale."
    )
    gpu_job_timeout_seconds: int = Field(
        default=900,
        ge=5,
        description="The GPU branch's deadline, queue wait plus generation (GpuJobTimeoutSeconds).",
    )
    blocked_prompt_terms: CsvList = Field(default_factory=list)
    bedrock_region: str | None = Field(
        default=None, description="Region to call Bedrock in; the function's own when unset."
    )
    bedrock_prices_usd: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description="Per-image prices overriding imagegen_common.pricing's table, as "
        '"model_id=price,model_id=price" (BedrockPriceOverrides).',
    )

    _split = field_validator(
        "allowed_model_ids", "allowed_sizes", "blocked_prompt_terms", mode="before"
    )(_split_csv)

    @field_validator("bedrock_prices_usd", mode="before")
    @classmethod
    def _parse_prices(cls, value: object) -> object:
        return parse_price_overrides(value) if isinstance(value, str) else value


class EventsSettings(BaseSettings):
    """Where result events go."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    event_bus_name: str
    event_source: str = "imagegen"


class JobsSettings(BaseSettings):
    """The table of jobs (one item per job: owner, stage, progress, webhook; see job_records)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    jobs_table_name: str
    job_record_retention_days: int = Field(
        default=30,
        ge=1,
        description="Days a job's item is kept after its last change (DynamoDB TTL, expires_at).",
    )


class ApiSettings(GenerationSettings, JobsSettings):
    """The API function: what a job may ask for, the state machine it starts, GPU backpressure,
    the jobs table it records and lists jobs in."""

    state_machine_arn: str
    webhook_allow_loopback: bool = Field(
        default=False,
        description="Accept webhook URLs on loopback (http allowed there). Only the local stack "
        "sets it (WEBHOOK_ALLOW_LOOPBACK); a deployment never does.",
    )
    gpu_queue_url: str | None = Field(
        default=None, description="The GPU job queue, whose backlog POST /generate checks."
    )
    gpu_model_id: str | None = Field(
        default=None,
        description="The GPU service's model (GpuModelId), as GET /models names it; unset: "
        "the API does not know it.",
    )
    gpu_max_backlog: int = Field(
        default=500,
        ge=0,
        description="GPU jobs waiting in the queue above which POST answers 429; 0: no limit "
        "(GpuMaxBacklog).",
    )
    gpu_backlog_retry_after_seconds: int = Field(
        default=30, ge=1, description="Retry-After of a 429 for a full GPU backlog."
    )
    cors_allowed_origins: CsvList = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) whose pages may call the API "
        "(CorsAllowedOrigins); empty: no CORS headers.",
    )

    @field_validator("cors_allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        # A browser's Origin header never ends with "/": "https://x.example/" would never match.
        split = _split_csv(value)
        return [str(o).rstrip("/") for o in split] if isinstance(split, list) else split


class WebhookDeliverySettings(JobsSettings):
    """WebhookDeliveryFunction: where to POST a job's events, how to sign them, when to retry."""

    webhook_secret_arn: str = Field(description="The signing secret (Secrets Manager, whsec_).")
    webhook_delivery_queue_url: str = Field(
        description="WebhookDeliveryQueue, whose messages' visibility sets the retry delay."
    )
    webhook_url: str = Field(
        default="",
        description="Stack-wide default target (WebhookUrl) for jobs that name no webhook: "
        "their completed events go there; empty: none.",
    )
    webhook_allow_loopback: bool = Field(
        default=False,
        description="Deliver to loopback (http allowed there). Only the local stack sets it.",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=15, description="Connect and response deadline of one POST."
    )
    webhook_retry_schedule_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
        description="The cap of each retry's delay (full jitter draws in [0, cap]); the last "
        "repeats (WebhookRetryScheduleSeconds, Standard Webhooks' schedule by default).",
    )
    webhook_delivery_attempts: int = Field(
        default=8,
        ge=1,
        description="Attempts in all, the queue's maxReceiveCount (WebhookDeliveryAttempts).",
    )
    webhook_secret_overlap_seconds: int = Field(
        default=86_400,
        ge=0,
        description="After a rotation, deliveries are signed with the previous key too for this "
        "long, so receivers can switch keys without losing a delivery.",
    )
    webhook_secret_cache_seconds: float = Field(
        default=60.0, ge=0, description="How long an execution environment reuses the keys."
    )

    @field_validator("webhook_retry_schedule_seconds", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("webhook_retry_schedule_seconds")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(step < 0 for step in value):
            raise ValueError("retry delays must not be negative")
        return value
