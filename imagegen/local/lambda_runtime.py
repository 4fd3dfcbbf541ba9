"""Runs our Lambda handlers in this process, as `sam local invoke` would in a container.

A function is loaded from its folder (``CodeUri``) under a module name of its own, with its
environment from the template applied while the module is imported (settings are parsed at
import time) and while the handler runs. ``os.environ`` is one per process, so the function's
variables are an overlay seen only by the invoking thread (``function_environment``): functions
may run concurrently (a Map state's iterations) and other threads never see their variables.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT_ID = "123456789012"

# Set for every function unless its environment says otherwise: what `sam local` sets, so
# powertools behaves as it does there (no X-Ray daemon to send traces to).
_LOCAL_DEFAULTS = {
    "AWS_SAM_LOCAL": "true",
    "POWERTOOLS_TRACE_DISABLED": "true",
}

_IMPORT_LOCK = threading.RLock()
"""Held while a handler module is imported: imports swap entries of ``sys.modules``."""


@dataclass(frozen=True)
class FunctionSpec:
    """One function of the template, as the local runtime needs it."""

    logical_id: str
    code_dir: Path
    handler: str
    environment: Mapping[str, str] = field(default_factory=dict)
    function_name: str | None = None
    function_arn: str | None = None
    timeout_s: int = 3
    memory_mb: int = 128
    region: str = DEFAULT_REGION

    @property
    def name(self) -> str:
        return self.function_name or self.logical_id

    @property
    def module_path(self) -> Path:
        """The handler's source file: CodeUri + the module part of Handler."""
        module, _ = _split_handler(self.handler)
        return self.code_dir / (module.replace(".", "/") + ".py")

    @property
    def handler_attribute(self) -> str:
        return _split_handler(self.handler)[1]


class HandlerLoadError(RuntimeError):
    """The handler's module could not be imported (its cold start failed)."""


class LambdaContext:
    """What the Lambda runtime passes as ``context``, with a deadline from the timeout."""

    def __init__(self, spec: FunctionSpec, request_id: str | None = None) -> None:
        self.function_name = spec.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = spec.function_arn or (
            f"arn:aws:lambda:{spec.region}:{DEFAULT_ACCOUNT_ID}:function:{spec.name}"
        )
        self.memory_limit_in_mb = spec.memory_mb
        self.aws_request_id = request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{spec.name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + spec.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _split_handler(handler: str) -> tuple[str, str]:
    module, _, attribute = handler.rpartition(".")
    if not module or not attribute:
        raise ValueError(f"Handler {handler!r} is not of the form 'module.function'")
    return module.replace("/", "."), attribute


class _ThreadEnvironment(MutableMapping[str, str]):
    """``os.environ`` with a per-thread overlay: a function's variables, seen by its thread only.

    On Lambda each function has a process, hence an environment, of its own. Here the functions
    share one process with the moto server, the GPU worker and tests: the overlay gives the
    invoking thread (and only it) the function's environment while the handler is imported and
    runs, without changing what any other thread reads. Threads without an overlay read and
    write the process environment as usual. Child processes get the process environment.
    """

    def __init__(self, process_environment: MutableMapping[str, str]) -> None:
        self.process_environment = process_environment
        self._local = threading.local()

    def _overlay(self) -> dict[str, str | None] | None:
        stack: list[dict[str, str | None]] = getattr(self._local, "stack", [])
        return stack[-1] if stack else None

    def push_overlay(self, variables: Mapping[str, str]) -> None:
        stack = self._local.__dict__.setdefault("stack", [])
        stack.append(dict(variables))

    def pop_overlay(self) -> None:
        self._local.stack.pop()

    def __getitem__(self, name: str) -> str:
        overlay = self._overlay()
        if overlay is not None and name in overlay:
            value = overlay[name]
            if value is None:
                raise KeyError(name)
            return value
        return self.process_environment[name]

    def __setitem__(self, name: str, value: str) -> None:
        overlay = self._overlay()
        if overlay is None:
            self.process_environment[name] = value
        else:
            overlay[name] = value  # a handler changing its own environment

    def __delitem__(self, name: str) -> None:
        overlay = self._overlay()
        if overlay is None:
            del self.process_environment[name]
        elif name not in self:
            raise KeyError(name)
        else:
            overlay[name] = None

    def _names(self) -> list[str]:
        overlay = self._overlay() or {}
        names = [n for n in self.process_environment if overlay.get(n, "") is not None]
        return names + [n for n, v in overlay.items() if v is not None and n not in names]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        overlay = self._overlay()
        if overlay is not None and name in overlay:
            return overlay[name] is not None  # type: ignore[index,unused-ignore]
        return name in self.process_environment

    def copy(self) -> dict[str, str]:
        return dict(self)

    def __repr__(self) -> str:
        return f"environ({dict(self)!r})"


def _thread_environment() -> _ThreadEnvironment:
    with _IMPORT_LOCK:
        current: MutableMapping[str, str] = os.environ
        if not isinstance(current, _ThreadEnvironment):
            current = _ThreadEnvironment(current)
            # Replaces the mapping, keeping the process environment it wraps (and writes to).
            os.environ = current  # type: ignore[assignment]  # noqa: B003
        return current


@contextlib.contextmanager
def function_environment(variables: Mapping[str, str]) -> Iterator[None]:
    """This thread sees the process environment plus ``variables`` during the block.

    Other threads are not affected. Nested blocks (a handler invoking another function in the
    same thread) see their own function's variables, not the caller's.
    """
    environment = _thread_environment()
    environment.push_overlay(variables)
    try:
        yield
    finally:
        environment.pop_overlay()


class LambdaRuntime:
    """Loads and invokes handlers; one module per function and environment (a warm container).

    ``base_environment`` is laid under every function's own variables (e.g. ``AWS_ENDPOINT_URL``
    of a local moto server), as the Lambda service adds its own variables to the template's.
    """

    def __init__(self, base_environment: Mapping[str, str] | None = None) -> None:
        self.base_environment = dict(base_environment or {})
        self._modules: dict[tuple[Any, ...], ModuleType] = {}

    def environment_for(self, spec: FunctionSpec) -> dict[str, str]:
        variables = dict(_LOCAL_DEFAULTS)
        variables.update(self.base_environment)
        variables.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": spec.name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
                "AWS_REGION": spec.region,
                "AWS_DEFAULT_REGION": spec.region,
                "LAMBDA_TASK_ROOT": str(spec.code_dir),
                "_HANDLER": spec.handler,
            }
        )
        variables.update({name: str(value) for name, value in spec.environment.items()})
        return variables

    def load(self, spec: FunctionSpec) -> Callable[[Any, Any], Any]:
        """The handler function, importing its module (a cold start) on first use."""
        variables = self.environment_for(spec)
        key = (spec.logical_id, spec.module_path.resolve(), tuple(sorted(variables.items())))
        with _IMPORT_LOCK, function_environment(variables):
            module = self._modules.get(key)
            if module is None:
                module = self._import(spec)
                self._modules[key] = module
        handler = getattr(module, spec.handler_attribute, None)
        if not callable(handler):
            raise HandlerLoadError(
                f"{spec.logical_id}: {spec.module_path} has no function {spec.handler_attribute!r}"
            )
        return handler

    def _import(self, spec: FunctionSpec) -> ModuleType:  # under _IMPORT_LOCK
        path = spec.module_path
        if not path.is_file():
            raise HandlerLoadError(f"{spec.logical_id}: handler module {path} does not exist")
        safe_id = re.sub(r"\W", "_", spec.logical_id)
        module_name = f"_imagegen_local_{safe_id}_{uuid.uuid4().hex[:8]}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise HandlerLoadError(f"{spec.logical_id}: cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        # Registered as Lambda's runtime registers a handler module, so that what resolves names
        # through sys.modules (pydantic's postponed annotations) finds it. The layer's modules are
        # shared by the functions of this process: they keep no per-function state (clients and
        # settings live in the handler modules, one copy per cold start).
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise HandlerLoadError(
                f"{spec.logical_id}: importing {path} failed: {type(error).__name__}: {error}"
            ) from error
        return module

    def invoke(self, spec: FunctionSpec, event: Any, request_id: str | None = None) -> Any:
        """Call the handler with ``event`` and a Lambda context; its exceptions propagate."""
        handler = self.load(spec)
        context = LambdaContext(spec, request_id)
        with function_environment(self.environment_for(spec)):
            return handler(event, context)

    def dispatch(self, spec: FunctionSpec, body: bytes) -> tuple[bytes, str | None]:
        """One invocation as the Lambda service answers it: (payload, function error or None).

        A handler's exception becomes Lambda's ``{"errorType", "errorMessage", "stackTrace"}``
        payload with the "Unhandled" function error, so Step Functions matches the class name.
        """
        request_id = str(uuid.uuid4())
        try:
            event = json.loads(body) if body else {}
            result = self.invoke(spec, event, request_id)
            return json.dumps(result).encode(), None
        except Exception as error:
            logger.warning(
                "%s failed: %s: %s", spec.logical_id, type(error).__name__, error, exc_info=False
            )
            error_type = type(error).__name__
            if isinstance(error, HandlerLoadError):
                error_type = "Runtime.ImportModuleError"
            elif isinstance(error, TypeError | ValueError) and "JSON serializable" in str(error):
                error_type = "Runtime.MarshalError"
            payload = {
                "errorType": error_type,
                "errorMessage": str(error),
                "requestId": request_id,
                "stackTrace": traceback.format_tb(error.__traceback__),
            }
            return json.dumps(payload).encode(), "Unhandled"
