"""The deployment files say what the service needs: checked statically (no Docker, no cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gpu_service.settings import Settings

GPU_SERVICE = Path(__file__).resolve().parents[2] / "gpu_service"
K8S = GPU_SERVICE / "k8s"


def _documents() -> dict[str, dict[str, Any]]:
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            documents[f"{document['kind']}/{document['metadata']['name']}"] = document
    return documents


def _container(documents: dict[str, dict[str, Any]], deployment: str) -> dict[str, Any]:
    [container] = documents[f"Deployment/{deployment}"]["spec"]["template"]["spec"]["containers"]
    return container


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_server_asks_for_a_gpu_and_is_ready_only_when_warm() -> None:
    container = _container(_documents(), "imagegen-gpu-server")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"][0]["containerPort"] == Settings().port


def test_worker_scales_on_queue_depth_down_to_zero() -> None:
    documents = _documents()
    container = _container(documents, "imagegen-gpu-worker")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["command"] == ["python", "-m", "gpu_service.worker"]
    scaled = documents["ScaledObject/imagegen-gpu-worker"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "imagegen-gpu-worker"
    assert scaled["minReplicaCount"] == 0
    assert [trigger["type"] for trigger in scaled["triggers"]] == ["aws-sqs-queue"]
    hpa = documents["HorizontalPodAutoscaler/imagegen-gpu-server"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "imagegen-gpu-server"


def test_configmap_keys_are_settings() -> None:
    data = _documents()["ConfigMap/imagegen-gpu"]["data"]
    known = {field.upper() for field in Settings.model_fields} | {"HF_HOME", "AWS_REGION"}
    assert set(data) <= known, set(data) - known
    Settings(**{key.lower(): value for key, value in data.items() if key.lower() in known})


def test_dockerfile_runs_as_non_root_with_a_health_check_and_the_shared_model() -> None:
    dockerfile = (GPU_SERVICE / "Dockerfile").read_text()
    assert "\nUSER 10001\n" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert "layers/common/imagegen_common/models.py" in dockerfile
    assert "torch==2.13.0" in dockerfile
    requirements = (GPU_SERVICE / "requirements.txt").read_text().splitlines()
    pins = [line for line in requirements if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)
