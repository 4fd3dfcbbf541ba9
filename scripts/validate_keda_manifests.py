"""Validate KEDA objects (ScaledObject, TriggerAuthentication, ...) against KEDA's CRDs.

kubernetes-validate knows only Kubernetes' own kinds. cloudcoil-models-keda holds pydantic models
generated from KEDA's CRD schemas; with unknown fields forbidden (as the API server's strict field
validation does) they catch misspelt fields, wrong types, missing required fields and a wrong
apiVersion. Runs in .venv-deploy (scripts/check_deployment.sh):

    python scripts/validate_keda_manifests.py gpu_service/k8s/worker-scaledobject.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import cloudcoil.pydantic
import pydantic
import yaml

# Before the models are defined (imported): they inherit their configuration from this base.
cloudcoil.pydantic.BaseModel.model_config["extra"] = "forbid"

from cloudcoil.models.keda import v1alpha1  # noqa: E402 - after the line above, on purpose
from cloudcoil.resources import Resource  # noqa: E402


def validate(path: Path) -> int:
    """Print one line per object; return the number that failed."""
    failures = 0
    for document in yaml.safe_load_all(path.read_text()):
        if not document:
            continue
        name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
        model = getattr(v1alpha1, str(document.get("kind")), None)
        if not isinstance(model, type) or not issubclass(model, Resource):
            print(f"ERROR {path}: {name} is not a KEDA v1alpha1 kind")
            failures += 1
            continue
        try:
            model.model_validate(document)
        except pydantic.ValidationError as error:
            print(f"ERROR {path}: {name}: {error}")
            failures += 1
        else:
            print(f"INFO {path}: {name} passed")
    return failures


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__)
        return 2
    return 1 if sum(validate(Path(path)) for path in paths) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
