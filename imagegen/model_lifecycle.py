"""Is every model we are configured to call still ACTIVE on Bedrock?

Bedrock's control plane answers ``GetFoundationModel`` (``GET /foundation-models/{id}``) with
``modelDetails.modelLifecycle.status`` ACTIVE or LEGACY (botocore's bedrock service model;
Amazon Bedrock User Guide, "Model lifecycle",
https://docs.aws.amazon.com/bedrock/latest/userguide/model-lifecycle.html). A LEGACY model will
reach its end of life, and accounts that have not used it lately are already refused it, so the
report warns about it, with the dates Bedrock gives; a model that cannot be looked up gets a
warning too. Without ``--model-id`` or ``ALLOWED_MODEL_IDS`` it checks every model of the Bedrock
adapters' registry (``imagegen_common.bedrock``), the deployment's default allow-list.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from imagegen_common.bedrock import KNOWN_MODEL_IDS


@dataclass(frozen=True)
class ModelLifecycle:
    """What Bedrock says of one model; ``status`` is None when it could not be looked up."""

    model_id: str
    status: str | None
    model_name: str | None = None
    end_of_life: datetime | None = None
    legacy_since: datetime | None = None
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.status == "ACTIVE"


def check_models(bedrock_client: Any, model_ids: Iterable[str]) -> list[ModelLifecycle]:
    """Look up each model's lifecycle with ``GetFoundationModel`` (a boto3 ``bedrock`` client)."""
    results = []
    for model_id in model_ids:
        try:
            details = bedrock_client.get_foundation_model(modelIdentifier=model_id)["modelDetails"]
        except ClientError as e:
            error = e.response.get("Error", {})
            results.append(
                ModelLifecycle(model_id, None, error=f"{error.get('Code')}: {error.get('Message')}")
            )
            continue
        except BotoCoreError as e:
            results.append(ModelLifecycle(model_id, None, error=str(e)))
            continue
        lifecycle = details.get("modelLifecycle") or {}
        results.append(
            ModelLifecycle(
                model_id=model_id,
                status=lifecycle.get("status"),
                model_name=details.get("modelName"),
                end_of_life=lifecycle.get("endOfLifeTime"),
                legacy_since=lifecycle.get("legacyTime"),
            )
        )
    return results


def format_report(lifecycles: Sequence[ModelLifecycle]) -> str:
    """One line per model, then a summary; ``WARNING`` marks LEGACY and unknown models."""
    lines = []
    for item in lifecycles:
        name = f" ({item.model_name})" if item.model_name else ""
        if item.status is None:
            lines.append(f"WARNING {item.model_id}: could not be looked up: {item.error}")
        elif item.status == "LEGACY":
            since = f" since {item.legacy_since:%Y-%m-%d}" if item.legacy_since else ""
            eol = f"; end of life {item.end_of_life:%Y-%m-%d}" if item.end_of_life else ""
            lines.append(
                f"WARNING {item.model_id}{name}: LEGACY{since}{eol}; move to an ACTIVE model "
                "before it reaches its end of life"
            )
        elif item.status == "ACTIVE":
            lines.append(f"OK      {item.model_id}{name}: ACTIVE")
        else:
            lines.append(f"WARNING {item.model_id}{name}: unexpected status {item.status}")
    warnings = sum(1 for item in lifecycles if not item.active)
    lines.append(
        f"{len(lifecycles)} model(s) checked, {warnings} warning(s)"
        if lifecycles
        else "no models to check"
    )
    return "\n".join(lines)


def _model_ids_from_env() -> list[str]:
    value = os.environ.get("ALLOWED_MODEL_IDS", "")
    ids = [item.strip() for item in value.split(",") if item.strip()]
    return ids or list(KNOWN_MODEL_IDS)


def main(argv: Sequence[str] | None = None) -> int:
    """``imagegen models``: print the report; exit 1 if any model is not ACTIVE."""
    parser = argparse.ArgumentParser(
        prog="imagegen models", description="Check the Bedrock lifecycle of the allowed models."
    )
    parser.add_argument(
        "--model-id",
        action="append",
        dest="model_ids",
        help="A model id to check (repeatable); default: ALLOWED_MODEL_IDS or every known model.",
    )
    parser.add_argument("--region", default=None, help="AWS Region of Bedrock.")
    args = parser.parse_args(argv)
    model_ids = args.model_ids or _model_ids_from_env()
    region = args.region or os.environ.get("BEDROCK_REGION") or None
    client = boto3.session.Session().client("bedrock", region_name=region)
    lifecycles = check_models(client, model_ids)
    sys.stdout.write(format_report(lifecycles) + "\n")
    return 0 if all(item.active for item in lifecycles) else 1


if __name__ == "__main__":
    sys.exit(main())
