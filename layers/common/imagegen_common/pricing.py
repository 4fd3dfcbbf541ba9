"""The prices a job's cost is computed from: the one table, each entry with its source and date.

A deployment overrides the Bedrock prices with ``BEDROCK_PRICES_USD`` ("model=price,...",
the template's ``BedrockPriceOverrides``) when AWS changes them or a contract differs; the GPU's
hourly price lives in the GPU service's settings (``GPU_PRICE_PER_HOUR_USD``, default
:data:`GPU_INSTANCE_PRICE`), because the GPU service imports nothing of ours but the domain model.

Prices are the list prices of us-west-2 (Bedrock, where the Stability models run) and us-east-1
(EC2, Step Functions, Lambda, S3), read 2026-11. docs/cost.md explains how they add up.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from imagegen_common.models import Cost, ImageOutcome


@dataclass(frozen=True)
class Price:
    usd: float
    unit: str
    source: str
    read_on: str


_BEDROCK_PRICING_PAGE = "https://aws.amazon.com/bedrock/pricing/"
# The Bedrock pricing page renders its figures client-side: the stored copies we could read
# (2026-11) carry none of them. These are the per-image on-demand prices AWS published for the
# three Stability models when they came to Bedrock, unchanged in every later source we found;
# check them against the page and override with BEDROCK_PRICES_USD if they differ.
BEDROCK_IMAGE_PRICES: Final[Mapping[str, Price]] = {
    "stability.stable-image-core-v1:1": Price(
        0.04, "image", _BEDROCK_PRICING_PAGE + " (Stability AI, Stable Image Core)", "2026-11"
    ),
    "stability.stable-image-ultra-v1:1": Price(
        0.14, "image", _BEDROCK_PRICING_PAGE + " (Stability AI, Stable Image Ultra)", "2026-11"
    ),
    "stability.sd3-5-large-v1:0": Price(
        0.08, "image", _BEDROCK_PRICING_PAGE + " (Stability AI, SD3.5 Large)", "2026-11"
    ),
}
"""On-demand price per generated image of every model in ``bedrock.registry`` (a test holds the
two lists equal)."""

GPU_HOUR_PRICES: Final[Mapping[str, Price]] = {
    "A10G": Price(
        1.006,
        "GPU-hour",
        "https://aws.amazon.com/ec2/pricing/on-demand/ (g5.xlarge, one A10G, Linux, us-east-1; "
        "also factualminds.com's EC2 on-demand table of 2026-06)",
        "2026-11",
    ),
    "H100": Price(
        6.88,
        "GPU-hour",
        "https://aws.amazon.com/ec2/pricing/on-demand/ (p5.48xlarge, eight H100, Linux, "
        "us-east-1: $55.04/h since AWS cut P5 prices by up to 45% in 2025-06, per usage.ai's "
        "2026-06 guide; third-party tables still quote the old $98.32/h. Check the page)",
        "2026-12",
    ),
}
"""One GPU's on-demand hour, by GPU (a multi-GPU instance's price divided by its GPUs):
what docs/cost.md prices each GPU's throughput at (a test holds its table to these)."""

GPU_INSTANCE_PRICE: Final = GPU_HOUR_PRICES["A10G"]
"""An on-demand g5.xlarge (one A10G), the template's default GpuInstanceType: the default of the
GPU service's GPU_PRICE_PER_HOUR_USD and of the template's GpuPricePerHourUsd (tests hold them
equal)."""

STEP_FUNCTIONS_TRANSITION = Price(
    0.000025, "state transition", "https://aws.amazon.com/step-functions/pricing/", "2026-11"
)
LAMBDA_ARM_GB_SECOND = Price(
    0.0000133334, "GB-second (arm64)", "https://aws.amazon.com/lambda/pricing/", "2026-11"
)
LAMBDA_REQUEST = Price(0.0000002, "request", "https://aws.amazon.com/lambda/pricing/", "2026-11")
S3_PUT_REQUEST = Price(0.000005, "PUT request", "https://aws.amazon.com/s3/pricing/", "2026-11")
S3_GET_REQUEST = Price(0.0000004, "GET request", "https://aws.amazon.com/s3/pricing/", "2026-11")
S3_STANDARD_GB_MONTH = Price(0.023, "GB-month", "https://aws.amazon.com/s3/pricing/", "2026-11")
"""The serverless parts of a job, for docs/cost.md; not charged to jobs in their events."""

_USD_DIGITS = 8  # a hundred-millionth of a dollar: below any price in the table


class PricingError(ValueError):
    """A price override that cannot be read."""


def parse_price_overrides(text: str) -> dict[str, float]:
    """``"model=price,model=price"`` as a mapping; raises PricingError naming the bad entry."""
    prices: dict[str, float] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        model_id, separator, price = entry.rpartition("=")
        try:
            usd = float(price)
        except ValueError:
            usd = -1.0
        if not separator or not model_id.strip() or not usd >= 0 or usd == float("inf"):
            raise PricingError(
                f"price override {entry!r} must be model_id=price in US dollars, e.g. "
                "stability.stable-image-core-v1:1=0.04"
            )
        prices[model_id.strip()] = usd
    return prices


def bedrock_image_price(model_id: str, overrides: Mapping[str, float] | None = None) -> Price:
    """The price of one image of ``model_id``: the override if any, else the table's.

    A model with neither is priced at 0 with a source saying so, rather than failing the image
    that was made (the allow-list and this table are both checked by tests).
    """
    if overrides and model_id in overrides:
        return Price(overrides[model_id], "image", "BedrockPriceOverrides", "deployment")
    return BEDROCK_IMAGE_PRICES.get(model_id, Price(0.0, "image", "no known price", "-"))


def bedrock_image_cost(model_id: str, overrides: Mapping[str, float] | None = None) -> Cost:
    """The cost of one image Bedrock made."""
    price = bedrock_image_price(model_id, overrides)
    return Cost(
        usd=round(price.usd, _USD_DIGITS),
        basis=f"Bedrock price per image ({model_id}, ${price.usd:g}, {price.source}, "
        f"{price.read_on})",
    )


def unbilled_image_cost(reason: str) -> Cost:
    """An image that was not made: Bedrock bills generated images only."""
    return Cost(usd=0.0, basis=f"no image made ({reason}): not billed")


def total_cost(outcomes: Iterable[ImageOutcome]) -> Cost:
    """The sum of the images' costs, its basis listing each distinct basis with its count.

    A failed image with no cost (throttling recorded by the workflow) was not made, so it counts
    0 as not billed; a made image whose backend reported no cost (a worker older than costs)
    counts 0 and is named in the basis, so a figure is never silently short.
    """
    usd = 0.0
    bases: Counter[str] = Counter()
    unreported = 0
    for outcome in outcomes:
        cost = outcome.cost
        if cost is None and not outcome.succeeded:
            reason = outcome.error.code.value if outcome.error else None
            cost = unbilled_image_cost(
                reason or (outcome.task_error.error if outcome.task_error else "failed")
            )
        if cost is None:
            unreported += 1
            continue
        usd += cost.usd
        bases[cost.basis] += 1
    parts = [f"{count} x {basis}" for basis, count in bases.items()]
    if unreported:
        parts.append(f"{unreported} image(s) with no reported cost, counted as 0")
    return Cost(usd=round(usd, _USD_DIGITS), basis=" + ".join(parts) or "no images")
