"""A function's own modules live next to its app.py and are imported as Lambda imports them.

Lambda puts a function's code folder first on ``sys.path``, so ``app.py`` imports a sibling with
``from executions import ...``. Tests (``import_function``) and the in-process local runtime load
many functions into one process, whose ``sys.modules`` they share: two functions with a sibling of
the same name must each get their own, and none may stay behind for the next import.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import tests.conftest
from imagegen.local.lambda_runtime import FunctionSpec, LambdaRuntime
from tests.conftest import import_function

APP = """\
from helper import OWNER


def lambda_handler(event, context):
    return {"owner": OWNER}
"""


def write_function(root: Path, name: str) -> Path:
    """``root/name/app.py`` and a sibling ``helper.py`` that says which function it belongs to."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "app.py").write_text(APP)
    (folder / "helper.py").write_text(f"OWNER = {name!r}\n")
    return folder


@pytest.fixture
def foreign_helper() -> Iterator[ModuleType]:
    """A module named like the siblings, already imported: no function may pick it up or drop it."""
    module = ModuleType("helper")
    sys.modules["helper"] = module
    yield module
    del sys.modules["helper"]


def test_import_function_gives_each_function_its_own_siblings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, foreign_helper: ModuleType
) -> None:
    monkeypatch.setattr(tests.conftest, "REPO_ROOT", tmp_path)
    write_function(tmp_path / "functions", "first")
    write_function(tmp_path / "functions", "second")
    path_before = list(sys.path)

    first = import_function("first")
    second = import_function("second")

    assert first.OWNER == "first"
    assert second.OWNER == "second"
    assert sys.modules["helper"] is foreign_helper
    assert sys.path == path_before


def test_import_function_loads_a_sibling_module_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tests.conftest, "REPO_ROOT", tmp_path)
    write_function(tmp_path / "functions", "first")

    assert import_function("first", "helper").OWNER == "first"
    assert "helper" not in sys.modules


def test_in_process_environments_give_each_function_its_own_siblings(
    tmp_path: Path, foreign_helper: ModuleType
) -> None:
    runtime = LambdaRuntime()
    specs = [
        FunctionSpec(
            logical_id=f"{name.title()}Function",
            code_dir=write_function(tmp_path, name),
            handler="app.lambda_handler",
        )
        for name in ("first", "second")
    ]
    path_before = list(sys.path)

    answers = [runtime.invoke(spec, {}) for spec in specs]

    assert answers == [{"owner": "first"}, {"owner": "second"}]
    assert sys.modules["helper"] is foreign_helper
    assert sys.path == path_before
    runtime.close()
