"""One Lambda execution environment as a child process: `python -m imagegen.local.lambda_bootstrap`.

What Lambda's Python bootstrap does in its container, for the local stack's process runtime
(``lambda_runtime.ProcessLambdaRuntime``): the process is started with the function's
environment as its real environment and its code folder as the working directory; it imports
the handler named by ``_HANDLER`` from ``LAMBDA_TASK_ROOT`` once (the cold start) and then serves
one invocation at a time, until its parent closes its standard input.

The protocol with the parent is one JSON document per line:
- parent -> child, on standard input: ``{"request_id", "invoked_function_arn", "remaining_ms",
  "event"}``;
- child -> parent, on the file descriptor that was standard output when the process started:
  first ``{"ready": true}`` or ``{"init_error": <error payload>}`` (then the process exits), then
  one ``{"result": <the handler's JSON result>}`` or ``{"error": <error payload>}`` per request.
Handlers, powertools and ``print`` write to standard output, so before anything is imported
that descriptor is moved aside and file descriptor 1 is pointed at standard error, which the
parent reads as the function's log.

Kept to the standard library: it is imported by every environment before the handler.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from typing import IO, Any

IMPORT_ERROR = "Runtime.ImportModuleError"
MARSHAL_ERROR = "Runtime.MarshalError"


class LambdaContext:
    """What the Lambda runtime passes as ``context``, with a deadline from the remaining time."""

    def __init__(
        self,
        *,
        function_name: str,
        invoked_function_arn: str,
        memory_limit_in_mb: int,
        aws_request_id: str,
        remaining_s: float,
        log_group_name: str | None = None,
        log_stream_name: str | None = None,
        function_version: str = "$LATEST",
    ) -> None:
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = aws_request_id
        self.log_group_name = log_group_name or f"/aws/lambda/{function_name}"
        self.log_stream_name = log_stream_name or new_log_stream_name()
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + remaining_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def new_log_stream_name() -> str:
    """A log stream name as Lambda gives each execution environment."""
    return time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex


def error_payload(
    error: BaseException, error_type: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """Lambda's answer for a failed invocation: ``{"errorType", "errorMessage", ...}``.

    The stack trace is the function's own, without this bootstrap's frames (as on Lambda).
    """
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename != __file__]
    payload: dict[str, Any] = {
        "errorType": error_type or type(error).__name__,
        "errorMessage": str(error),
        "stackTrace": traceback.format_list(frames),
    }
    if request_id is not None:
        payload["requestId"] = request_id
    return payload


def split_handler(handler: str) -> tuple[str, str]:
    """(module, function) of a ``module.function`` handler string."""
    module, _, attribute = handler.rpartition(".")
    if not module or not attribute:
        raise ValueError(f"Handler {handler!r} is not of the form 'module.function'")
    return module.replace("/", "."), attribute


def _load_handler(task_root: str, handler: str) -> Callable[[Any, Any], Any]:
    module_name, attribute = split_handler(handler)
    sys.path.insert(0, task_root)
    module = importlib.import_module(module_name)
    function = getattr(module, attribute, None)
    if not callable(function):
        raise AttributeError(f"Handler '{attribute}' missing on module '{module_name}'")
    return function


def _send(channel: IO[bytes], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message).encode() + b"\n")
    channel.flush()


def _serve(channel: IO[bytes], requests: IO[bytes], handler: Callable[[Any, Any], Any]) -> None:
    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "function")
    memory_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
    log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME") or new_log_stream_name()
    for line in requests:
        request = json.loads(line)
        request_id = str(request["request_id"])
        context = LambdaContext(
            function_name=function_name,
            invoked_function_arn=str(request["invoked_function_arn"]),
            memory_limit_in_mb=memory_mb,
            aws_request_id=request_id,
            remaining_s=float(request["remaining_ms"]) / 1000,
            log_group_name=os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME"),
            log_stream_name=log_stream_name,
        )
        try:
            result = handler(request["event"], context)
        except Exception as error:
            _send(channel, {"error": error_payload(error, request_id=request_id)})
            continue
        try:
            encoded = json.dumps(result)
        except (TypeError, ValueError) as error:
            marshal = TypeError(f"Unable to marshal response: {error}")
            _send(channel, {"error": error_payload(marshal, MARSHAL_ERROR, request_id)})
            continue
        channel.write(b'{"result": ' + encoded.encode() + b"}\n")
        channel.flush()


def main() -> int:
    # The protocol keeps the descriptor that was standard output; what the function prints goes
    # to standard error from now on, one whole line per write.
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # Ctrl-C in the terminal reaches the whole process group; the parent stops its environments.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        handler = _load_handler(os.environ["LAMBDA_TASK_ROOT"], os.environ["_HANDLER"])
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        traceback.print_exc()
        _send(channel, {"init_error": error_payload(RuntimeError(message), IMPORT_ERROR)})
        return 1
    _send(channel, {"ready": True})
    _serve(channel, sys.stdin.buffer, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
