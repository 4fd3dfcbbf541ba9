"""The deployment files say what the service needs: checked statically (no Docker, no cluster)."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpu_service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_SERVICE = REPO_ROOT / "gpu_service"
K8S = GPU_SERVICE / "k8s"


def _documents() -> dict[str, dict[str, Any]]:
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            documents[f"{document['kind']}/{document['metadata']['name']}"] = document
    return documents


def _pod(documents: dict[str, dict[str, Any]], deployment: str) -> dict[str, Any]:
    pod: dict[str, Any] = documents[f"Deployment/{deployment}"]["spec"]["template"]
    return pod


def _container(documents: dict[str, dict[str, Any]], deployment: str) -> dict[str, Any]:
    [container] = _pod(documents, deployment)["spec"]["containers"]
    return container


def _copied_into_the_image() -> set[str]:
    """Repository paths that the Dockerfile's COPY instructions name (all but the last word)."""
    text = (GPU_SERVICE / "Dockerfile").read_text().replace("\\\n", " ")
    copied: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            copied.update(word for word in words[1:-1] if not word.startswith("--"))
    return copied


def _module_level_imports(module: str) -> set[str]:
    """Our modules that ``module`` imports when it is imported (not those imported inside a
    function, such as cli's development-only tiny model)."""
    package = module.split(".")[0]
    root = REPO_ROOT / "layers" / "common" if package == "imagegen_common" else REPO_ROOT
    tree = ast.parse((root / (module.replace(".", "/") + ".py")).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] in ("gpu_service", "imagegen_common")}


def _runtime_modules() -> set[str]:
    """gpu_service.server and gpu_service.worker, and our modules they import, transitively."""
    found: set[str] = set()
    pending = ["gpu_service.server", "gpu_service.worker"]
    while pending:
        module = pending.pop()
        if module not in found:
            found.add(module)
            pending.extend(_module_level_imports(module))
    return found


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


def test_the_image_holds_the_runtime_modules_and_nothing_of_the_development_ones() -> None:
    modules = _runtime_modules()
    needed = {
        f"gpu_service/{module.removeprefix('gpu_service.')}.py"
        for module in modules
        if module.startswith("gpu_service.")
    } | {"gpu_service/__init__.py"}
    needed |= {
        f"layers/common/imagegen_common/{module.removeprefix('imagegen_common.')}.py"
        for module in modules
        if module.startswith("imagegen_common.")
    } | {"layers/common/imagegen_common/__init__.py"}
    copied = _copied_into_the_image()
    assert {path for path in copied if path.endswith(".py")} == needed
    assert "gpu_service/bench.py" not in copied
    assert "gpu_service/tiny_model.py" not in copied
    # The build context (BuildKit's Dockerfile-specific ignore file) lets every copied file in.
    ignore = (GPU_SERVICE / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert "*" in ignore
    for path in copied:
        assert any(fnmatch.fnmatch(path, pattern) for pattern in allowed), path


def test_pods_run_read_only_with_a_writable_tmp_and_the_worker_alone_has_the_aws_role() -> None:
    documents = _documents()
    for deployment in ("imagegen-gpu-server", "imagegen-gpu-worker"):
        pod = _pod(documents, deployment)["spec"]
        container = _container(documents, deployment)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert mounts["/models"] == "model-cache"
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    liveness_file = {
        item["name"]: item["value"] for item in _container(documents, "imagegen-gpu-worker")["env"]
    }["LIVENESS_FILE"]
    assert liveness_file.startswith("/tmp/")

    server = _pod(documents, "imagegen-gpu-server")["spec"]
    assert "serviceAccountName" not in server  # no IRSA role: it calls no AWS API
    assert server["automountServiceAccountToken"] is False
    worker = _pod(documents, "imagegen-gpu-worker")["spec"]
    account = documents[f"ServiceAccount/{worker['serviceAccountName']}"]
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]


def test_every_object_is_in_the_namespace_and_every_pod_under_a_network_policy() -> None:
    documents = _documents()
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    namespace = kustomization["namespace"]
    assert documents[f"Namespace/{namespace}"]
    for key, document in documents.items():
        if not key.startswith("Namespace/"):
            assert document["metadata"]["namespace"] == namespace, key
    selected = [
        document["spec"]["podSelector"]["matchLabels"]
        for key, document in documents.items()
        if key.startswith("NetworkPolicy/")
    ]
    for deployment in ("imagegen-gpu-server", "imagegen-gpu-worker"):
        labels = _pod(documents, deployment)["metadata"]["labels"]
        assert any(selector.items() <= labels.items() for selector in selected), deployment
    image = kustomization["images"][0]
    assert re.fullmatch(r"sha256:\S+", image["digest"])  # pods run the image that was tested


def test_the_ecs_worker_may_put_progress_on_the_bus_it_is_given() -> None:
    from samtranslator.yaml_helper import yaml_parse

    template = yaml_parse((GPU_SERVICE / "ecs" / "template.yaml").read_text())
    statements = template["Resources"]["GpuTaskRole"]["Properties"]["Policies"][0][
        "PolicyDocument"
    ]["Statement"]
    [progress] = [s for s in statements if isinstance(s, dict) and "Fn::If" in s]
    condition, statement, otherwise = progress["Fn::If"]
    assert condition == "ReportsProgress"
    assert (statement["Action"], statement["Resource"]) == (
        "events:PutEvents",
        {"Ref": "EventBusArn"},
    )
    assert otherwise == {"Ref": "AWS::NoValue"}
    [container] = template["Resources"]["GpuTaskDefinition"]["Properties"]["ContainerDefinitions"]
    environment = {item["Name"]: item["Value"] for item in container["Environment"]}
    assert environment["EVENT_BUS_NAME"] == {"Ref": "EventBusName"}
    assert environment["EVENT_SOURCE"] == {"Ref": "EventSource"}
    # On EKS the bus comes from the ConfigMap; EVENT_SOURCE and PROGRESS_REPORTING keep their
    # defaults (imagegen, true), which the ConfigMap does not restate.
    assert "EVENT_BUS_NAME" in _documents()["ConfigMap/imagegen-gpu"]["data"]


# --- gpu_service/README.md's settings table -------------------------------------------------

NOT_SETTINGS = {"HF_HOME", "HF_HUB_OFFLINE", "AWS_REGION", "AWS_ENDPOINT_URL"}
"""Variables of the libraries (Hugging Face, boto3) that the table lists beside ours."""


def documented_settings() -> list[tuple[list[str], list[str]]]:
    """The README's configuration table: each row's variables, with its defaults split to match
    (``1 / 0.0`` for two variables, ``512`` for both)."""
    text = (GPU_SERVICE / "README.md").read_text()
    table = text.split("## Configuration (environment variables)", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        names_cell, default_cell = line.split("|")[1:3]
        names = re.findall(r"`([A-Z0-9_]+)`", names_cell)
        defaults = [part.strip().strip("`") for part in re.split(r" / |, ", default_cell.strip())]
        if len(defaults) == 1:
            defaults = defaults * len(names)
        rows.append((names, defaults))
    return rows


def test_the_readme_documents_every_setting_and_no_other() -> None:
    documented = {name for names, _ in documented_settings() for name in names}
    assert documented - NOT_SETTINGS == {field.upper() for field in Settings.model_fields}


def test_the_readme_gives_each_setting_its_default() -> None:
    checked = 0
    for names, defaults in documented_settings():
        for name, text in zip(names, defaults, strict=True):
            field = Settings.model_fields.get(name.lower())
            if field is None or field.default is None or text in {"\u2013", "**required**"}:
                continue
            if " " in text:  # words, not a value ("model's own", "/models in the image")
                continue
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv(name, text)
                assert getattr(Settings(), name.lower()) == field.default, (name, text)
            checked += 1
    assert checked >= 20
