"""Importing a Lambda function's handler module as Lambda's Python runtime does: the one loader.

Lambda puts the function's folder (its ``CodeUri``, the task root) first on ``sys.path`` and
imports the handler's module, which imports the modules beside it (``from executions import
...``). Here several functions may be imported into one process (the in-process runtime, the
tests, the OpenAPI export), while ``sys.modules`` is one per process: a function's sibling modules
are imported afresh for it and leave ``sys.modules`` afterwards (the handler module keeps what it
imported), so two functions' modules of the same name never meet. A sibling must therefore be
imported when the handler module is, as ours are.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def import_function_module(module_path: Path, module_name: str) -> ModuleType:
    """Import ``module_path`` (a function's ``app.py`` or a module beside it) as ``module_name``.

    The module stays registered in ``sys.modules`` under ``module_name``, as Lambda's runtime
    registers a handler module (pydantic resolves postponed annotations through it); on an error
    it is removed again and the error propagates.
    """
    folder = module_path.parent
    spec = importlib.util.spec_from_file_location(module_name, module_path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {module_path}")
    module = importlib.util.module_from_spec(spec)
    siblings = {
        entry.stem if entry.suffix == ".py" else entry.name
        for entry in folder.iterdir()
        if entry.suffix == ".py" or (entry / "__init__.py").is_file()
    }

    def sibling_entries() -> list[str]:
        return [name for name in sys.modules if name.split(".", 1)[0] in siblings]

    sys.modules[module_name] = module
    shadowed = {name: sys.modules.pop(name) for name in sibling_entries()}
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    finally:
        sys.path.remove(str(folder))
        for name in sibling_entries():
            del sys.modules[name]
        sys.modules.update(shadowed)
    return module
