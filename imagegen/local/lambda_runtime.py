"""Runs our Lambda handlers as the Lambda service does: execution environments, one request each.

Lambda runs a function in execution environments: each has its own process, environment
variables and module state (a cold start imports the handler once), and serves one request at a
time; concurrent requests get more environments, idle ones are reused. Handlers rely on that
(powertools' resolver keeps per-request state in its module-level ``app``), so the local runtime
does the same, with one interface and two kinds of environment:

- ``ProcessLambdaRuntime`` (the local stack, `imagegen local`): each environment is a child
  process (``imagegen.local.lambda_bootstrap``) started with the function's environment as its
  process environment. The function's ``Timeout`` is enforced (the environment is killed), and an
  environment whose process dies is replaced. Its functions reach AWS over HTTP, so they need a
  moto server (``AWS_ENDPOINT_URL``).
- ``LambdaRuntime`` (the in-process ``mock_aws`` of the workflow tests and `imagegen invoke`,
  which a child process cannot reach): each environment is a separate import of the handler's
  module in this process. Its variables are an overlay of ``os.environ`` seen only by the thread
  that imports or runs it (``function_environment``), since environments of several functions
  run at once in this one process (a Map state's iterations, EventBridge targets). No timeout
  (a thread cannot be stopped).

Both keep a pool per function that grows on demand up to ``max_environments`` (like a reserved
concurrency; further callers wait for an environment to be free) and answer ``dispatch`` as the
Lambda service answers ``Invoke``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Protocol

from imagegen.local.function_import import import_function_module
from imagegen.local.lambda_bootstrap import (
    IMPORT_ERROR,
    MARSHAL_ERROR,
    LambdaContext,
    error_payload,
    new_log_stream_name,
    split_handler,
)

logger = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT_ID = "123456789012"
DEFAULT_MAX_ENVIRONMENTS = 10
"""Execution environments per function at most (Lambda's reserved concurrency, locally)."""

EXIT_ERROR = "Runtime.ExitError"
TIMEOUT_ERROR = "Sandbox.Timedout"
INIT_TIMEOUT_S = 10.0
"""Lambda's limit for a cold start (the init phase), on top of which the invocation's own
timeout applies when the init runs long; both together bound a child's start here."""

# Set for every function unless its environment says otherwise: what `sam local` sets, so
# powertools behaves as it does there (no X-Ray daemon to send traces to).
_LOCAL_DEFAULTS = {
    "AWS_SAM_LOCAL": "true",
    "POWERTOOLS_TRACE_DISABLED": "true",
}

# What a child process gets from this one besides the function's variables: what the Lambda
# service puts in every environment (a PATH, the locale, the role's credentials), and what this
# machine's network needs (Bedrock itself is reached with --bedrock aws).
_INHERITED_BY_CHILDREN = (
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)

_IMPORT_LOCK = threading.RLock()
"""Held while a handler module is imported in this process: imports change ``sys.modules``."""


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
    def arn(self) -> str:
        return self.function_arn or (
            f"arn:aws:lambda:{self.region}:{DEFAULT_ACCOUNT_ID}:function:{self.name}"
        )

    @property
    def module_path(self) -> Path:
        """The handler's source file: CodeUri + the module part of Handler."""
        module, _ = split_handler(self.handler)
        return self.code_dir / (module.replace(".", "/") + ".py")

    @property
    def handler_attribute(self) -> str:
        return split_handler(self.handler)[1]


class HandlerLoadError(RuntimeError):
    """The handler's module could not be imported (its cold start failed)."""


class FunctionError(RuntimeError):
    """An invocation that failed in its execution environment, as Lambda reports it.

    ``payload`` is Lambda's ``{"errorType", "errorMessage", "stackTrace"?}``: the handler's
    exception (its class name as ``errorType``), ``Runtime.ExitError`` (the process died),
    ``Sandbox.Timedout`` (the function's Timeout passed) or ``Runtime.MarshalError``.
    """

    def __init__(self, payload: Mapping[str, Any]) -> None:
        super().__init__(str(payload.get("errorMessage", "")))
        self.payload = dict(payload)

    @property
    def error_type(self) -> str:
        return str(self.payload.get("errorType", "Unhandled"))


class ExecutionEnvironment(Protocol):
    """One execution environment: a cold-started handler serving one request at a time."""

    @property
    def alive(self) -> bool: ...

    def invoke(self, event: Any, request_id: str) -> Any:
        """The handler's result; raises what the invocation failed with."""
        ...

    def request_stop(self) -> None:
        """Begin stopping (without waiting)."""
        ...

    def stop(self, timeout_s: float) -> None:
        """Stop within ``timeout_s``, ending an invocation in progress."""
        ...


class _EnvironmentPool:
    """A function's environments: reuse an idle one, else start one, else wait (in line) for one."""

    def __init__(self, start: Callable[[], ExecutionEnvironment], capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"max_environments must be at least 1, got {capacity}")
        self._start = start
        self._capacity = capacity
        self._idle: list[ExecutionEnvironment] = []
        self._all: list[ExecutionEnvironment] = []
        self._starting = 0
        self._next_ticket = 0
        self._now_serving = 0
        self._changed = threading.Condition()
        self._closed = False

    @contextlib.contextmanager
    def environment(
        self, served: Callable[[], None] | None = None
    ) -> Iterator[ExecutionEnvironment]:
        """An environment for one invocation, for this caller alone during the block.

        ``served`` is called when the caller's turn comes, before a cold start if one is needed:
        where the wait in line (this pool's cap, not Lambda's scaling) ends.
        """
        environment = self._acquire(served)
        try:
            yield environment
        finally:
            self._release(environment)

    def warm(self) -> ExecutionEnvironment:
        """An idle environment (started if there is none), left idle."""
        with self._changed:
            for environment in reversed(self._idle):
                if environment.alive:
                    return environment
        with self.environment() as environment:
            return environment

    def _acquire(self, served: Callable[[], None] | None = None) -> ExecutionEnvironment:
        dead: list[ExecutionEnvironment] = []
        reused: ExecutionEnvironment | None = None
        try:
            with self._changed:
                # First come, first served: a caller never waits behind later ones (a request
                # the API has been holding must not time out while newer ones are served).
                ticket = self._next_ticket
                self._next_ticket += 1
                while True:
                    if self._closed:
                        raise RuntimeError("the Lambda runtime has been closed")
                    if ticket == self._now_serving:
                        while self._idle:
                            # The most recently used first: the warmest, as Lambda reuses them.
                            environment = self._idle.pop()
                            if environment.alive:
                                self._next_in_line()
                                reused = environment
                                break
                            self._all.remove(environment)
                            dead.append(environment)
                        if reused is not None:
                            break
                        if len(self._all) + self._starting < self._capacity:
                            self._starting += 1
                            self._next_in_line()
                            break
                    self._changed.wait()
        finally:
            for environment in dead:  # died while idle: its replacement is started below
                environment.stop(0)
        if served is not None:
            served()
        if reused is not None:
            return reused
        try:
            environment = self._start()  # the cold start, outside the lock
        except BaseException:
            with self._changed:
                self._starting -= 1
                self._changed.notify_all()
            raise
        with self._changed:
            self._starting -= 1
            if not self._closed:
                self._all.append(environment)
                return environment
        environment.stop(0)
        raise RuntimeError("the Lambda runtime has been closed")

    def _next_in_line(self) -> None:  # under the lock
        self._now_serving += 1
        self._changed.notify_all()

    def _release(self, environment: ExecutionEnvironment) -> None:
        with self._changed:
            keep = environment.alive and not self._closed
            if keep:
                self._idle.append(environment)
            elif environment in self._all:
                self._all.remove(environment)
            self._changed.notify_all()
        if not keep:
            environment.stop(0)

    def close(self) -> list[ExecutionEnvironment]:
        """Refuse further invocations; returns every environment, for the caller to stop."""
        with self._changed:
            self._closed = True
            environments, self._all, self._idle = self._all, [], []
            self._changed.notify_all()
        return environments


@dataclass(frozen=True)
class Invocation:
    """One invocation that has returned (or failed), as invocation listeners are told of it."""

    logical_id: str
    event: Any
    succeeded: bool
    ended_at: float
    """``time.monotonic()`` when it returned."""


class LambdaRuntime:
    """Runs the stack's functions in execution environments inside this process.

    ``base_environment`` is laid under every function's own variables (e.g. ``AWS_ENDPOINT_URL``
    of a local moto server), as the Lambda service adds its own variables to the template's.
    ``function_overrides`` (by logical id) go over a function's own: what only the local stack
    sets, e.g. WEBHOOK_ALLOW_LOOPBACK, which no template may.
    """

    def __init__(
        self,
        base_environment: Mapping[str, str] | None = None,
        *,
        max_environments: int = DEFAULT_MAX_ENVIRONMENTS,
        function_overrides: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.base_environment = dict(base_environment or {})
        self.function_overrides = {
            logical_id: dict(variables)
            for logical_id, variables in (function_overrides or {}).items()
        }
        self.max_environments = max_environments
        self._pools: dict[tuple[Any, ...], _EnvironmentPool] = {}
        self._pools_lock = threading.Lock()
        self._closed = False
        self._invocation_listeners: list[Callable[[Invocation], None]] = []

    def add_invocation_listener(self, listener: Callable[[Invocation], None]) -> None:
        """Call ``listener`` after every invocation of any function (from the invoking thread).

        What tests wait on instead of silence: e.g. "ReportJobEndingFunction has returned for
        this execution", after which nothing more is owed for it.
        """
        self._invocation_listeners.append(listener)

    def remove_invocation_listener(self, listener: Callable[[Invocation], None]) -> None:
        self._invocation_listeners.remove(listener)

    def set_function_overrides(self, logical_id: str, variables: Mapping[str, str]) -> None:
        """Replace the variables laid over a function's own, as ``UpdateFunctionConfiguration``
        changes a function's environment on AWS: the next invocations run in new execution
        environments, and those of the old configuration are stopped. Call it while the function
        is idle."""
        with self._pools_lock:
            self.function_overrides[logical_id] = dict(variables)
            stale = [key for key in self._pools if key[0] == logical_id]
            pools = [self._pools.pop(key) for key in stale]
        for pool in pools:
            for environment in pool.close():
                environment.request_stop()
                environment.stop(2.0)

    def environment_for(self, spec: FunctionSpec) -> dict[str, str]:
        """The function's variables: local defaults, the base environment, Lambda's, its own."""
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
        variables.update(self.function_overrides.get(spec.logical_id, {}))
        return variables

    def _pool(self, spec: FunctionSpec) -> _EnvironmentPool:
        variables = self.environment_for(spec)
        # A changed spec (another environment, other code) is another function version.
        key = (
            spec.logical_id,
            spec.function_arn,
            spec.module_path.resolve(),
            spec.handler,
            spec.timeout_s,
            spec.memory_mb,
            tuple(sorted(variables.items())),
        )
        with self._pools_lock:
            if self._closed:
                raise RuntimeError("the Lambda runtime has been closed")
            pool = self._pools.get(key)
            if pool is None:
                pool = _EnvironmentPool(
                    lambda: self._start_environment(spec, variables), self.max_environments
                )
                self._pools[key] = pool
            return pool

    def _start_environment(
        self, spec: FunctionSpec, variables: Mapping[str, str]
    ) -> ExecutionEnvironment:
        return _InProcessEnvironment(spec, variables)

    def load(self, spec: FunctionSpec) -> Callable[[Any, Any], Any]:
        """The handler of an idle in-process environment of ``spec`` (cold-started if needed)."""
        environment = self._pool(spec).warm()
        if not isinstance(environment, _InProcessEnvironment):
            raise TypeError(f"{type(self).__name__} does not run handlers in this process")
        return environment.handler

    def invoke(
        self,
        spec: FunctionSpec,
        event: Any,
        request_id: str | None = None,
        served: Callable[[], None] | None = None,
    ) -> Any:
        """The handler's result for ``event``; raises what the invocation failed with.

        In this process that is the handler's own exception; from a child process a
        ``FunctionError``. A failed cold start raises ``HandlerLoadError``. ``served`` is called
        once the invocation has an environment's turn (``_EnvironmentPool.environment``).
        """
        succeeded = False
        try:
            with self._pool(spec).environment(served) as environment:
                result = environment.invoke(event, request_id or str(uuid.uuid4()))
            succeeded = True
            return result
        finally:
            if self._invocation_listeners:
                done = Invocation(spec.logical_id, event, succeeded, time.monotonic())
                for listener in list(self._invocation_listeners):
                    listener(done)

    def dispatch(self, spec: FunctionSpec, body: bytes) -> tuple[bytes, str | None]:
        """One invocation as the Lambda service answers it: (payload, function error or None).

        A failed invocation becomes Lambda's ``{"errorType", "errorMessage", "stackTrace"}``
        payload with the "Unhandled" function error, so Step Functions matches the class name.
        """
        request_id = str(uuid.uuid4())
        try:
            event = json.loads(body) if body else {}
            result = self.invoke(spec, event, request_id)
            return json.dumps(result).encode(), None
        except FunctionError as error:
            payload = {**error.payload, "requestId": request_id}
            logger.warning("%s failed: %s: %s", spec.logical_id, error.error_type, error)
        except Exception as error:
            logger.warning("%s failed: %s: %s", spec.logical_id, type(error).__name__, error)
            error_type = None
            if isinstance(error, HandlerLoadError):
                error_type = IMPORT_ERROR
            elif isinstance(error, TypeError | ValueError) and "JSON serializable" in str(error):
                error_type = MARSHAL_ERROR
            payload = error_payload(error, error_type, request_id)
        return json.dumps(payload).encode(), "Unhandled"

    def close(self) -> None:
        """Stop every execution environment; invocations in progress fail."""
        with self._pools_lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), {}
        environments = [environment for pool in pools for environment in pool.close()]
        for environment in environments:
            environment.request_stop()
        deadline = time.monotonic() + 2.0
        for environment in environments:
            environment.stop(max(0.0, deadline - time.monotonic()))


# --- Environments in this process ----------------------------------------------------------


class _ThreadEnvironment(MutableMapping[str, str]):
    """``os.environ`` with a per-thread overlay: a function's variables, seen by its thread only.

    On Lambda each function has a process, hence an environment, of its own. In-process
    environments share one process with the moto mock and the tests: the overlay gives the
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


class _InProcessEnvironment:
    """A module instance of the handler, imported under the function's variables."""

    alive = True

    def __init__(self, spec: FunctionSpec, variables: Mapping[str, str]) -> None:
        self.spec = spec
        self.variables = dict(variables)
        self.log_stream_name = new_log_stream_name()
        with _IMPORT_LOCK, function_environment(self.variables):
            self.module = self._import(spec)
        handler = getattr(self.module, spec.handler_attribute, None)
        if not callable(handler):
            self.stop(0)
            raise HandlerLoadError(
                f"{spec.logical_id}: {spec.module_path} has no function {spec.handler_attribute!r}"
            )
        self.handler: Callable[[Any, Any], Any] = handler

    @staticmethod
    def _import(spec: FunctionSpec) -> ModuleType:  # under _IMPORT_LOCK
        path = spec.module_path
        if not path.is_file():
            raise HandlerLoadError(f"{spec.logical_id}: handler module {path} does not exist")
        safe_id = re.sub(r"\W", "_", spec.logical_id)
        module_name = f"_imagegen_local_{safe_id}_{uuid.uuid4().hex[:8]}"
        try:
            return import_function_module(path, module_name)
        except Exception as error:
            raise HandlerLoadError(
                f"{spec.logical_id}: importing {path} failed: {type(error).__name__}: {error}"
            ) from error

    def invoke(self, event: Any, request_id: str) -> Any:
        context = LambdaContext(
            function_name=self.spec.name,
            invoked_function_arn=self.spec.arn,
            memory_limit_in_mb=self.spec.memory_mb,
            aws_request_id=request_id,
            remaining_s=self.spec.timeout_s,
            log_stream_name=self.log_stream_name,
        )
        with function_environment(self.variables):
            return self.handler(event, context)

    def request_stop(self) -> None:
        pass

    def stop(self, timeout_s: float) -> None:
        sys.modules.pop(getattr(getattr(self, "module", None), "__name__", ""), None)


# --- Environments as child processes --------------------------------------------------------


class ProcessLambdaRuntime(LambdaRuntime):
    """Runs each execution environment as a child process (``imagegen.local.lambda_bootstrap``).

    ``log`` receives each line the functions write (standard output and error), as CloudWatch
    Logs would; by default they go to this process's standard output.
    """

    def __init__(
        self,
        base_environment: Mapping[str, str] | None = None,
        *,
        max_environments: int = DEFAULT_MAX_ENVIRONMENTS,
        log: Callable[[str], None] | None = None,
        function_overrides: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(
            base_environment,
            max_environments=max_environments,
            function_overrides=function_overrides,
        )
        self.log = log or _write_line

    def _start_environment(
        self, spec: FunctionSpec, variables: Mapping[str, str]
    ) -> ExecutionEnvironment:
        process_environment = {
            name: os.environ[name] for name in _INHERITED_BY_CHILDREN if name in os.environ
        }
        process_environment.update(variables)
        process_environment["AWS_LAMBDA_LOG_STREAM_NAME"] = new_log_stream_name()
        return _ChildProcessEnvironment(spec, process_environment, self.log)


def _write_line(line: str) -> None:
    # OSError, ValueError: the console went away (a closed pipe, a finished test).
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(line + "\n")


class _EnvironmentExited(Exception):
    """The child process ended (its output reached end of file)."""


class _ChildProcessEnvironment:
    """One child process serving invocations of one function over a pipe."""

    def __init__(
        self,
        spec: FunctionSpec,
        process_environment: Mapping[str, str],
        log: Callable[[str], None],
    ) -> None:
        self.spec = spec
        self._buffer = bytearray()
        self._stopping = False
        self._in_use = threading.Lock()
        """Held while an invocation reads the replies: a concurrent stop() leaves them open."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imagegen.local.lambda_bootstrap"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(process_environment),
            cwd=spec.code_dir,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._requests: IO[bytes] = self.process.stdin
        self._replies = self.process.stdout.fileno()
        self._log_reader = threading.Thread(
            target=self._forward_log,
            args=(log,),
            name=f"lambda-log-{spec.logical_id}-{self.process.pid}",
            daemon=True,
        )
        self._log_reader.start()
        try:
            first = self._read_message(time.monotonic() + INIT_TIMEOUT_S + spec.timeout_s)
        except TimeoutError:
            self.stop(0)
            raise HandlerLoadError(
                f"{spec.logical_id}: the cold start took more than "
                f"{INIT_TIMEOUT_S + spec.timeout_s:.0f} s"
            ) from None
        except _EnvironmentExited:
            self.stop(1)
            raise HandlerLoadError(
                f"{spec.logical_id}: the environment exited during its cold start "
                f"({self._exit_description()})"
            ) from None
        if "init_error" in first:
            self.stop(1)
            message = first["init_error"].get("errorMessage", "")
            raise HandlerLoadError(
                f"{spec.logical_id}: importing {spec.module_path} failed: {message}"
            )

    @property
    def alive(self) -> bool:
        return not self._stopping and self.process.poll() is None

    def invoke(self, event: Any, request_id: str) -> Any:
        request = {
            "request_id": request_id,
            "invoked_function_arn": self.spec.arn,
            "remaining_ms": self.spec.timeout_s * 1000,
            "event": event,
        }
        deadline = time.monotonic() + self.spec.timeout_s
        try:
            with self._in_use:
                self._requests.write(json.dumps(request).encode() + b"\n")
                self._requests.flush()
                reply = self._read_message(deadline)
        except TimeoutError:
            self.stop(0)
            raise FunctionError(
                {
                    "errorType": TIMEOUT_ERROR,
                    "errorMessage": f"Task timed out after {self.spec.timeout_s} seconds",
                }
            ) from None
        except (_EnvironmentExited, OSError, ValueError):
            # OSError: a broken pipe; ValueError: the input was closed by a concurrent stop().
            self.stop(1)
            raise FunctionError(
                {
                    "errorType": EXIT_ERROR,
                    "errorMessage": (
                        f"RequestId: {request_id} Error: Runtime exited with error: "
                        f"{self._exit_description()}"
                    ),
                }
            ) from None
        if "error" in reply:
            raise FunctionError(reply["error"])
        return reply["result"]

    def _read_message(self, deadline: float) -> dict[str, Any]:
        """The next protocol message; TimeoutError at ``deadline``, _EnvironmentExited at EOF."""
        poller = select.poll()
        poller.register(self._replies, select.POLLIN)
        while (end := self._buffer.find(b"\n")) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if not poller.poll(remaining * 1000):
                continue
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise _EnvironmentExited
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        message: dict[str, Any] = json.loads(line)
        return message

    def _forward_log(self, log: Callable[[str], None]) -> None:
        assert self.process.stderr is not None
        with self.process.stderr as lines:
            for line in lines:
                log(line.decode("utf-8", errors="replace").rstrip("\r\n"))

    def _exit_description(self) -> str:
        try:
            code = self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "exit status unknown"
        if code < 0:
            return f"signal: {signal.strsignal(-code) or -code}".lower()
        return f"exit status {code}"

    def request_stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError, ValueError):
            self._requests.close()  # the bootstrap ends when its input ends

    def stop(self, timeout_s: float) -> None:
        self.request_stop()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        # The replies stay open while an invocation reads them (it ends at their end of file).
        if self.process.stdout is not None and self._in_use.acquire(blocking=False):
            try:
                self.process.stdout.close()
            finally:
                self._in_use.release()
        # Its last lines are written before stop() returns (unless a grandchild holds the pipe).
        self._log_reader.join(timeout=1)
