"""The domain model: requests, jobs, image outcomes and the events subscribers receive.

Defined once, here, and shared by the API, the workflow's functions, the GPU service and the
local stack. This module imports nothing else of ours, so `gpu_service` can depend on it alone.
Everything that crosses a boundary (HTTP body, state machine input/output, SQS message,
EventBridge detail) is one of these models, dumped with ``model_dump(mode="json")``.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    UrlConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

SCHEMA_VERSION: Final = "1.0"
"""Version of an event ``detail`` whose shape is as first published. Bump the minor part when
optional fields are added (a 1.0 consumer ignores them), the major part for a breaking change."""
COST_SCHEMA_VERSION: Final = "1.1"
"""Version of the details that first carried ``cost`` (Image Generated, Image Generation Failed)."""
CONTROLS_SCHEMA_VERSION: Final = "1.2"
"""Version of the result details that carry the generation controls used (``parameters``'
steps, guidance, scheduler, format, aspect ratio) and each image's ``content_type``."""
PROGRESS_SCHEMA_VERSION: Final = "1.1"
"""Version of "Image Generation Progress" details (1.0 published with schema 1.1 results; 1.1
adds the image's ``content_type``, with schema 1.2 results)."""

MAX_PROMPT_CHARS = 1000
MAX_IMAGES_PER_JOB = 4
MAX_SEED = 4_294_967_294
"""Stability's models accept seeds in [0, 4294967294]; we use the same range for every backend."""


class Backend(StrEnum):
    BEDROCK = "bedrock"
    GPU = "gpu"


class OutputFormat(StrEnum):
    """The file format of the images a job stores."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"

    @property
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.JPEG else self.value

    @property
    def lossy(self) -> bool:
        return self is not OutputFormat.PNG


DEFAULT_OUTPUT_QUALITY: Final = 90
"""The quality (1 to 100) of a jpeg or webp image when the request names none."""


class Scheduler(StrEnum):
    """The GPU's denoising schedulers a request may choose (the gpu service maps each to its
    diffusers class). ``default`` is the model's own, or the GPU service's SCHEDULER."""

    DEFAULT = "default"
    EULER = "euler"
    EULER_ANCESTRAL = "euler_ancestral"
    DPMPP_2M = "dpmpp_2m"
    DDIM = "ddim"
    UNIPC = "unipc"


class AspectRatio(StrEnum):
    """The aspect ratios Bedrock's Stability models take instead of a pixel size."""

    R16_9 = "16:9"
    R1_1 = "1:1"
    R21_9 = "21:9"
    R2_3 = "2:3"
    R3_2 = "3:2"
    R4_5 = "4:5"
    R5_4 = "5:4"
    R9_16 = "9:16"
    R9_21 = "9:21"


class FallbackBackend(StrEnum):
    NONE = "none"
    GPU = "gpu"


class ExecutionStatus(StrEnum):
    """The status of a job: Step Functions' execution statuses, as the API reports them."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    ABORTED = "ABORTED"


class ErrorCode(StrEnum):
    """Machine-readable error codes, shared by the API, failure events and image outcomes.

    The first group are what a job can fail with (failure events, ``GET /generate/{id}``); the
    second are what the API and the gateway answer a request with, in the one error shape
    ``{"error": {"code", "message", "fields"?}}`` (:class:`ErrorResponse`).
    """

    # A job's failure.
    INVALID_PROMPT = "INVALID_PROMPT"
    CONTENT_FILTERED = "CONTENT_FILTERED"
    MODEL_THROTTLED = "MODEL_THROTTLED"
    MODEL_ERROR = "MODEL_ERROR"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
    INVALID_JOB = "INVALID_JOB"
    WORKER_LOST = "WORKER_LOST"
    TIMEOUT = "TIMEOUT"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    # A request's refusal.
    VALIDATION_ERROR = "VALIDATION_ERROR"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    CONFLICT = "CONFLICT"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    GATEWAY_TIMEOUT = "GATEWAY_TIMEOUT"


class Stage(StrEnum):
    """Where a job is: ``GET /generate/{id}``, the job list and progress events report it.

    A GPU job goes queued (with its ``queue_position``), generating (``progress`` in denoising
    steps), storing, signing, publishing; a Bedrock job goes validating, generating
    (``progress`` in images, each image's outcome as it arrives), signing, publishing. Every job
    ends in one of the terminal stages, which follow its status.
    """

    QUEUED = "queued"
    VALIDATING = "validating"
    GENERATING = "generating"
    STORING = "storing"
    SIGNING = "signing"
    PUBLISHING = "publishing"
    FAILING = "failing"
    # Terminal: one per ending.
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


STAGE_LABELS: Final[dict[Stage, str]] = {
    Stage.QUEUED: "Queued",
    Stage.VALIDATING: "Validating the request",
    Stage.GENERATING: "Generating",
    Stage.STORING: "Storing images",
    Stage.SIGNING: "Signing image URLs",
    Stage.PUBLISHING: "Publishing the result",
    Stage.FAILING: "Failing",
    Stage.SUCCEEDED: "Succeeded",
    Stage.FAILED: "Failed",
    Stage.TIMED_OUT: "Timed out",
    Stage.CANCELLED: "Cancelled",
}
"""What each stage means, in words for people: the OpenAPI document gives them with the enum
(``x-enum-descriptions``), and the playground shows them."""

TERMINAL_STAGE_BY_STATUS: Final[dict[ExecutionStatus, Stage]] = {
    ExecutionStatus.SUCCEEDED: Stage.SUCCEEDED,
    ExecutionStatus.FAILED: Stage.FAILED,
    ExecutionStatus.TIMED_OUT: Stage.TIMED_OUT,
    ExecutionStatus.ABORTED: Stage.CANCELLED,
}


class Progress(BaseModel):
    """How far a generating job is. GPU: denoising steps; Bedrock: images finished."""

    step: int = Field(ge=0, description="Steps (or images) done so far.")
    steps: int = Field(ge=1, description="Steps (or images) in all.")
    percent: float = Field(ge=0, le=100, description="Of the whole job, all images included.")
    unit: Literal["steps", "images"] = Field(description="What step and steps count.")
    eta_seconds: float | None = Field(
        default=None, ge=0, description="Estimated seconds to the end of generation."
    )


class WebhookEvent(StrEnum):
    """What a per-request webhook is sent: the one terminal event, and/or throttled progress."""

    COMPLETED = "completed"
    PROGRESS = "progress"


WebhookUrl = Annotated[HttpUrl, UrlConstraints(max_length=2048)]


class WebhookRequest(BaseModel):
    """``webhook`` of ``POST /generate``: where to POST this job's events, signed (Standard
    Webhooks). The URL is checked again at delivery; private addresses are refused."""

    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl = Field(description="https URL that receives the deliveries.")
    events: list[WebhookEvent] = Field(
        default_factory=lambda: [WebhookEvent.COMPLETED],
        min_length=1,
        max_length=len(WebhookEvent),
        description="Which deliveries to send: completed (the terminal event), progress.",
    )

    @field_validator("events")
    @classmethod
    def _no_repeats(cls, events: list[WebhookEvent]) -> list[WebhookEvent]:
        if len(set(events)) != len(events):
            raise ValueError("events must not repeat")
        return events


# --- What a prompt may hold -------------------------------------------------------------------
# Prompts reach logs, terminals, the job list and a model. A prompt is text a person can read:
# letters (L*), marks (M*), numbers (N*), punctuation (P*), symbols (S*), spaces (Zs), tabs and
# line breaks, and at least one visible character. Refused, each with its rule:
#   control_character     other C0/C1 controls (Cc: NUL, ESC and the terminal escapes it starts),
#                         and the line and paragraph separators (Zl, Zp)
#   bidi_control          bidirectional embeddings, overrides, isolates and marks, which reorder
#                         what is shown (U+202E makes "gpj.exe" read "exe.jpg" in a job list)
#   format_character      other invisible format characters (Cf: U+200B, U+2060, U+FEFF, ...),
#                         but ZWJ and ZWNJ (emoji sequences, Indic and Persian scripts) and the
#                         emoji tag characters (subdivision flags), which text needs
#   private_use_character private-use code points (Co), which show as nothing agreed
#   surrogate_character   lone surrogates (Cs), which are no text at all
#   no_visible_characters nothing but spaces, marks and the invisible letters (Hangul fillers,
#                         the blank braille pattern)
# Unassigned code points (Cn) pass: Python's Unicode tables lag new characters (emoji), and
# they hold nothing the rules above guard against.
_LINE_BREAKS = frozenset("\t\n\r")
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_JOINERS = frozenset("\u200c\u200d")
_EMOJI_TAGS = range(0xE0020, 0xE0080)
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _character_problem(character: str) -> str | None:
    """The rule a character of a prompt breaks, or None."""
    category = unicodedata.category(character)
    if category == "Cc":
        return None if character in _LINE_BREAKS else "control_character"
    if category in ("Zl", "Zp"):
        return "control_character"
    if character in _BIDI_CONTROLS:
        return "bidi_control"
    if category == "Cf":
        allowed = character in _JOINERS or ord(character) in _EMOJI_TAGS
        return None if allowed else "format_character"
    if category == "Co":
        return "private_use_character"
    if category == "Cs":
        return "surrogate_character"
    return None


def _readable_text(text: str) -> str:
    for character in text:
        rule = _character_problem(character)
        if rule is not None:
            name = unicodedata.name(character, "unnamed")
            raise PydanticCustomError(
                rule,
                "U+{code} ({name}) is not allowed ({rule}): a prompt holds letters, marks, "
                "numbers, punctuation, symbols, spaces, tabs and line breaks",
                {"code": f"{ord(character):04X}", "name": name, "rule": rule},
            )
    if text and not any(
        unicodedata.category(character)[0] in "LNPS" and character not in _INVISIBLE_LETTERS
        for character in text
    ):
        raise PydanticCustomError(
            "no_visible_characters", "the text has no visible character: nothing to draw"
        )
    return text


Prompt = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS),
    AfterValidator(_readable_text),
]
NegativePrompt = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=MAX_PROMPT_CHARS),
    AfterValidator(_readable_text),
]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Dimension = Annotated[int, Field(ge=64, le=2048, multiple_of=8)]


class GenerateRequest(BaseModel):
    """Body of ``POST /generate``. Unset fields take the deployment's defaults (see settings)."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt = Field(description="What to draw; 1 to 1000 characters after trimming.")
    negative_prompt: NegativePrompt | None = Field(
        default=None, description="What to keep out of the image."
    )
    width: Dimension | None = Field(default=None, description="Pixels; set with height.")
    height: Dimension | None = Field(default=None, description="Pixels; set with width.")
    seed: Seed | None = Field(
        default=None, description="Seed of the first image; image i uses seed + i."
    )
    num_images: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_JOB)
    backend: Backend | None = Field(default=None, description="bedrock or gpu.")
    model_id: str | None = Field(
        default=None, description="A Bedrock model id from the deployment's allow-list."
    )
    webhook: WebhookRequest | None = Field(
        default=None, description="Where to POST this job's signed events."
    )
    steps: int | None = Field(
        default=None,
        ge=1,
        le=150,
        description="Denoising steps (gpu); the deployment's default when unset, at most its "
        "GpuMaxSteps.",
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0,
        le=30,
        description="Classifier-free guidance (gpu); 0 turns it off (what sd-turbo wants).",
    )
    scheduler: Scheduler | None = Field(
        default=None, description="The denoising scheduler (gpu), from an allow-list."
    )
    output_format: OutputFormat | None = Field(
        default=None,
        description="png (the default), jpeg or webp; the S3 key and the Content-Type follow it.",
    )
    output_quality: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description=f"Quality of a jpeg or webp image (default {DEFAULT_OUTPUT_QUALITY}); "
        "png is lossless and takes none.",
    )
    aspect_ratio: AspectRatio | None = Field(
        default=None,
        description="For Bedrock models, which take a ratio, not pixels: instead of width and "
        "height (docs/api.md gives the pixels of each).",
    )

    @model_validator(mode="after")
    def _width_and_height_together(self) -> GenerateRequest:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height must be given together")
        return self

    # Field validators, not model validators, so that a refusal names its field: each reads the
    # fields declared before it (info.data).
    @field_validator("aspect_ratio")
    @classmethod
    def _one_way_to_say_the_size(
        cls, ratio: AspectRatio | None, info: ValidationInfo
    ) -> AspectRatio | None:
        if ratio is not None and info.data.get("width") is not None:
            raise PydanticCustomError(
                "size_given_twice", "give aspect_ratio or width and height, not both"
            )
        return ratio

    @field_validator("output_quality")
    @classmethod
    def _quality_of_a_lossy_format(cls, quality: int | None, info: ValidationInfo) -> int | None:
        output_format = info.data.get("output_format")
        if quality is not None and not (output_format is not None and output_format.lossy):
            raise PydanticCustomError(
                "quality_without_lossy_format",
                "output_quality applies to output_format jpeg or webp only",
            )
        return quality


class GenerationControls(BaseModel):
    """The controls a job runs with, defaults resolved: with the seeds, what reproduces it.

    Fields a backend does not take are None: a Bedrock job has no steps, a GPU job no aspect
    ratio."""

    output_format: OutputFormat = OutputFormat.PNG
    output_quality: int | None = Field(default=None, description="jpeg and webp only.")
    steps: int | None = Field(default=None, description="Denoising steps (gpu).")
    guidance_scale: float | None = Field(default=None, description="gpu.")
    scheduler: Scheduler | None = Field(default=None, description="gpu.")
    aspect_ratio: AspectRatio | None = Field(
        default=None, description="The ratio sent to a Bedrock model."
    )


class ImageSlot(BaseModel):
    """One image a job will make: where it goes and with which seed."""

    index: int = Field(ge=0, lt=MAX_IMAGES_PER_JOB)
    seed: Seed
    s3_key: str


class Job(BaseModel):
    """A validated request, as the workflow carries it in ``$.job``.

    The API builds it with the caller's identity and the request; the "Validate Prompt" state
    resolves defaults (backend, model, size), checks the model's limits and fills ``images``.
    """

    job_id: str = Field(description="The Step Functions execution name; the API's execution_id.")
    owner: str = Field(description="Caller identity: 'apikey:<id>', 'iam:<arn>' or 'anonymous'.")
    submitted_at: datetime
    request: GenerateRequest
    backend: Backend | None = None
    model_id: str | None = None
    width: int | None = None
    height: int | None = None
    fallback_backend: FallbackBackend = FallbackBackend.NONE
    bucket: str | None = None
    images: list[ImageSlot] = Field(default_factory=list)
    controls: GenerationControls = Field(
        default_factory=GenerationControls,
        description='The controls resolved by "Validate Prompt", defaults included.',
    )
    gpu_timeout_seconds: int | None = Field(
        default=None,
        description="The GPU branch's deadline in seconds, queue wait plus generation: the "
        '"Generate on GPU" state\'s TimeoutSecondsPath. Set by "Validate Prompt".',
    )


class TaskError(BaseModel):
    """A task failure as Step Functions reports it in a Catch's ``$.error`` ({Error, Cause})."""

    model_config = ConfigDict(populate_by_name=True)

    error: str = Field(alias="Error")
    cause: str | None = Field(default=None, alias="Cause")


class ErrorInfo(BaseModel):
    code: ErrorCode
    message: str


class FieldError(BaseModel):
    """One bad field of a request: where it is, which rule it broke, in words."""

    field: str = Field(description="Dotted path of the field, e.g. 'prompt' or 'webhook.url'.")
    in_: str = Field(default="body", alias="in", description="body, path, query or header.")
    rule: str = Field(description="The rule broken, e.g. 'string_too_short', 'json_depth'.")
    message: str

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class ApiError(BaseModel):
    code: ErrorCode
    message: str
    fields: list[FieldError] | None = Field(
        default=None, description="For VALIDATION_ERROR: each bad field with the rule it broke."
    )


class ErrorResponse(BaseModel):
    """The body of every error the API answers, from any route, method or layer."""

    error: ApiError


class Cost(BaseModel):
    """What a job, or one image of it, cost us: a figure and how it was reached.

    An estimate from list prices (``imagegen_common.pricing``) and, on the GPU, the measured
    seconds of the pipeline calls; not a bill.
    """

    usd: float = Field(ge=0, description="US dollars.")
    basis: str = Field(
        description="How usd was computed, with the prices used, e.g. 'Bedrock price per image "
        "($0.04, stability.stable-image-core-v1:1, ...)' or 'GPU 3.200 s x $1.006/GPU-hour / "
        "4 images in the call'."
    )


class ImageOutcome(BaseModel):
    """The result of generating one image: either an S3 object or an error."""

    index: int
    seed: int | None = None
    bucket: str | None = None
    s3_key: str | None = None
    width: int | None = None
    height: int | None = None
    content_type: str | None = Field(
        default=None, description="The stored object's Content-Type (image/png when unset)."
    )
    error: ErrorInfo | None = None
    task_error: TaskError | None = Field(
        default=None,
        description="A failure the workflow caught for this image ({Error, Cause}), e.g. "
        "throttling that outlasted its retries; turned into ``error`` when results are signed.",
    )
    cost: Cost | None = Field(
        default=None,
        description="What this image cost: its Bedrock price, or its share of a GPU call's "
        "measured seconds. None when the backend reported none.",
    )

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.task_error is None and self.s3_key is not None


class GenerationResult(BaseModel):
    """What a backend hands back to the workflow (``$.generation``): one outcome per slot."""

    images: list[ImageOutcome]


class GpuJobMessage(BaseModel):
    """Body of a message on the GPU job queue, sent by the workflow's "Generate on GPU" state.

    The worker answers ``SendTaskSuccess(task_token, GenerationResult)`` or
    ``SendTaskFailure(task_token, error=<ErrorCode>, cause=<message>)``.
    """

    task_token: str
    job: Job


# --- Events (EventBridge ``detail``) ---------------------------------------------------------

IMAGE_GENERATED = "Image Generated"
IMAGE_GENERATION_FAILED = "Image Generation Failed"
IMAGE_GENERATION_CANCELLED = "Image Generation Cancelled"
IMAGE_GENERATION_PROGRESS = "Image Generation Progress"


class Parameters(BaseModel):
    """The parameters a job ran with, as events report them."""

    prompt: str
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    seed: int | None = None
    # Since 1.2: the controls the job ran with (GenerationControls), defaults included.
    output_format: OutputFormat | None = None
    output_quality: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: Scheduler | None = None
    aspect_ratio: AspectRatio | None = None

    @classmethod
    def of(
        cls,
        request: GenerateRequest,
        width: int | None,
        height: int | None,
        controls: GenerationControls,
    ) -> Parameters:
        """A request's parameters with its planned size and resolved controls."""
        return cls(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=width,
            height=height,
            num_images=request.num_images,
            seed=request.seed,
            **controls.model_dump(),
        )


class SignedImage(BaseModel):
    index: int
    url: str = Field(description="Pre-signed GET URL; valid until expires_at.")
    expires_at: datetime = Field(
        description="When the URL stops working: the earlier of ExpiresIn and the signing "
        "credentials' expiry."
    )
    s3_uri: str
    width: int
    height: int
    seed: int | None = None
    content_type: str = Field(default="image/png", description="Since 1.2: the file's type.")


class FailedImage(BaseModel):
    index: int
    seed: int | None = None
    error: ErrorInfo


class _EventDetail(BaseModel):
    schema_version: str = SCHEMA_VERSION
    execution_id: str
    owner: str


class ImageGeneratedDetail(_EventDetail):
    """``detail`` of "Image Generated"."""

    # 1.0, 1.1 too: details written before costs or controls (an execution's output read back).
    schema_version: Literal["1.0", "1.1", "1.2"] = CONTROLS_SCHEMA_VERSION
    backend: Backend
    model_id: str | None
    parameters: Parameters
    images: list[SignedImage]
    failed_images: list[FailedImage] = Field(default_factory=list)
    completed_at: datetime
    cost: Cost | None = Field(
        default=None, description="What the job cost: the sum of its images' costs (since 1.1)."
    )


class ImageGenerationFailedDetail(_EventDetail):
    """``detail`` of "Image Generation Failed"."""

    # 1.0, 1.1 too: details written before costs or controls (an execution's output read back).
    schema_version: Literal["1.0", "1.1", "1.2"] = CONTROLS_SCHEMA_VERSION
    backend: Backend | None = None
    model_id: str | None = None
    parameters: Parameters | None = None
    error: ErrorInfo
    failed_at: datetime
    cost: Cost | None = Field(
        default=None,
        description="What was spent before the failure, at least 0 with its basis (since 1.1).",
    )


class ImageGenerationCancelledDetail(_EventDetail):
    """``detail`` of "Image Generation Cancelled"."""

    schema_version: Literal["1.0"] = SCHEMA_VERSION

    cancelled_at: datetime


class ImageGenerationProgressDetail(_EventDetail):
    """``detail`` of "Image Generation Progress": a job moved on. Not a result: a job has any
    number of these (at most about one a second while generating) and then one result event."""

    schema_version: Literal["1.0", "1.1"] = PROGRESS_SCHEMA_VERSION
    stage: Stage
    backend: Backend | None = None
    progress: Progress | None = None
    image: ImageOutcome | None = Field(
        default=None,
        description="An image that has just been stored or has failed (no URL: GET signs it).",
    )
    at: datetime = Field(description="When the job was there; later details supersede earlier.")


RESULT_EVENT_DETAILS: Final[dict[str, type[_EventDetail]]] = {
    IMAGE_GENERATED: ImageGeneratedDetail,
    IMAGE_GENERATION_FAILED: ImageGenerationFailedDetail,
    IMAGE_GENERATION_CANCELLED: ImageGenerationCancelledDetail,
}
"""Every result event's detail-type, with the model of its ``detail``: the one list that the
subscriber, the event schemas and template.yaml's result rules follow (a test holds the rules)."""


# --- API responses ---------------------------------------------------------------------------


class GenerateAccepted(BaseModel):
    execution_id: str
    status_url: str


class ImageView(BaseModel):
    url: str
    expires_at: datetime
    width: int
    height: int
    seed: int | None = None
    content_type: str = "image/png"


class JobStatus(BaseModel):
    """Body of ``GET /generate/{execution_id}``."""

    execution_id: str
    status: ExecutionStatus
    stage: Stage | None = Field(default=None, description="Where the job is (see Stage).")
    backend: Backend | None = None
    parameters: Parameters | None = Field(
        default=None,
        description="What the job runs with, defaults resolved (controls, size, model); null "
        "for a job accepted before they were recorded.",
    )
    queue_position: int | None = Field(
        default=None, ge=0, description="While queued for the GPU: jobs ahead of this one."
    )
    progress: Progress | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = Field(
        default=None, description="When generation started (left the queue)."
    )
    updated_at: datetime | None = None
    images: list[ImageView] = Field(
        default_factory=list, description="The images made so far; all of them once SUCCEEDED."
    )
    failed_images: list[FailedImage] = Field(default_factory=list)
    error: ErrorInfo | None = None
    cost: Cost | None = Field(
        default=None,
        description="What the job cost, once it has ended (as its result event says); null "
        "while it runs and for a cancelled job, whose spend is not recorded.",
    )


class ModelOffer(BaseModel):
    """A model a backend of this deployment runs."""

    model_id: str = Field(description="What model_id names (Bedrock), or the GPU service's model.")
    name: str = Field(description="The model's name, for people.")
    default: bool = Field(description="The model a request that names none gets.")
    takes: list[str] = Field(
        default_factory=list,
        description="The generation controls it takes (steps, guidance_scale, scheduler, "
        "aspect_ratio, output_quality); any other gets 422.",
    )
    output_formats: list[OutputFormat] = Field(default_factory=lambda: [OutputFormat.PNG])
    aspect_ratios: list[AspectRatio] = Field(
        default_factory=list, description="The ratios it takes (with the sizes they give)."
    )
    schedulers: list[Scheduler] = Field(default_factory=list)
    default_steps: int | None = None
    max_steps: int | None = None
    default_guidance_scale: float | None = None


class BackendOffer(BaseModel):
    """One backend of this deployment: its models and the sizes it takes."""

    backend: Backend
    default: bool = Field(description="The backend a request that names none gets.")
    models: list[ModelOffer]
    sizes: list[str] = Field(description="The WIDTHxHEIGHT sizes a request may ask of it here.")
    default_size: str = Field(description="The size a request that names none gets.")


class ModelCatalogue(BaseModel):
    """Body of ``GET /models``: what this deployment offers, from its own settings."""

    backends: list[BackendOffer]


class JobSummary(BaseModel):
    """One job of ``GET /generate``: what it asked for and where it is (no image URLs)."""

    execution_id: str
    status: ExecutionStatus
    stage: Stage | None = None
    backend: Backend | None = None
    prompt: str
    num_images: int
    submitted_at: datetime
    updated_at: datetime | None = None
    cost: Cost | None = None


class JobPage(BaseModel):
    """Body of ``GET /generate``: the caller's own jobs, newest first."""

    jobs: list[JobSummary]
    next_token: str | None = Field(
        default=None, description="Pass as next_token for the next page; null on the last."
    )
