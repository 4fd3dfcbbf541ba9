"""The code's boundaries (CONTRIBUTING.md), read from the source with ``ast``:

- deployed code (the functions and the layer) never patches a library's private attributes: a
  library release could then change what runs without a test noticing;
- the functions never import the GPU service, torch or the tooling package;
- the domain model imports nothing else of ours, and the GPU service nothing of ours but it;
- production code never imports moto.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOYED = [REPO_ROOT / "functions", REPO_ROOT / "layers" / "common" / "imagegen_common"]
PRODUCTION = [*DEPLOYED, REPO_ROOT / "gpu_service", REPO_ROOT / "imagegen"]
OURS = {"imagegen", "imagegen_common", "gpu_service"}


def sources(folders: list[Path]) -> Iterator[Path]:
    for folder in folders:
        yield from sorted(folder.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def private_attribute_writes(path: Path) -> list[str]:
    """``obj._name = ...`` (or ``setattr(obj, "_name", ...)``) where obj is not self or cls."""
    where = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path.name
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and str(node.args[1].value).startswith("_")
        ):
            found.append(f"{where}:{node.lineno}")
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr.startswith("_")
                and not (isinstance(target.value, ast.Name) and target.value.id in {"self", "cls"})
            ):
                found.append(f"{where}:{node.lineno} {target.attr}")
    return found


def test_deployed_code_writes_no_private_attribute_of_another_object() -> None:
    writes = [write for path in sources(DEPLOYED) for write in private_attribute_writes(path)]
    assert writes == []


def test_the_check_finds_a_private_attribute_write(tmp_path: Path) -> None:
    module = tmp_path / "patching.py"
    module.write_text(
        "app._request_validation_middleware = object()\n"
        "setattr(app, '_route', None)\n"
        "self._ours = 1\n"
    )
    assert private_attribute_writes(module) == [
        "patching.py:1 _request_validation_middleware",
        "patching.py:2",
    ]


@pytest.mark.parametrize("path", list(sources([REPO_ROOT / "functions"])), ids=str)
def test_functions_import_no_gpu_service_torch_or_tooling(path: Path) -> None:
    roots = {name.split(".", 1)[0] for name in imported_modules(path)}
    assert not roots & {"gpu_service", "torch", "diffusers", "imagegen"}, path


def test_the_domain_model_imports_nothing_else_of_ours() -> None:
    path = REPO_ROOT / "layers" / "common" / "imagegen_common" / "models.py"
    assert not {name for name in imported_modules(path) if name.split(".", 1)[0] in OURS}


@pytest.mark.parametrize("path", list(sources([REPO_ROOT / "gpu_service"])), ids=str)
def test_the_gpu_service_shares_only_the_domain_model(path: Path) -> None:
    ours = {name for name in imported_modules(path) if name.split(".", 1)[0] in OURS}
    assert {name for name in ours if not name.startswith("gpu_service")} <= {
        "imagegen_common.models"
    }, path


# The local stack (imagegen/local) is where moto belongs: it wraps the real code from outside.
OUTSIDE_THE_LOCAL_STACK = [
    path
    for path in sources(PRODUCTION)
    if not path.is_relative_to(REPO_ROOT / "imagegen" / "local")
]


@pytest.mark.parametrize("path", OUTSIDE_THE_LOCAL_STACK, ids=str)
def test_production_code_never_imports_moto(path: Path) -> None:
    assert "moto" not in {name.split(".", 1)[0] for name in imported_modules(path)}, path
