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


class ApiSettings(GenerationSettings):
    """The API function: what a job may ask for, the state machine it starts, GPU backpressure."""

    state_machine_arn: str
    gpu_queue_url: str | None = Field(
        default=None, description="The GPU job queue, whose backlog POST /generate checks."
    )
    gpu_max_backlog: int = Field(
        default=0,
        ge=0,
        description="GPU jobs waiting in the queue above which POST answers 429; 0: no limit.",
    )
    gpu_backlog_retry_after_seconds: int = Field(
        default=30, ge=1, description="Retry-After of a 429 for a full GPU backlog."
    )
