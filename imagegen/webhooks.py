"""`imagegen webhook ...`: verify a delivery, print or rotate the signing secret.

- ``verify``: checks a delivery's ``webhook-signature`` with the ``standardwebhooks`` package (the
  reference implementation), as a receiver does: the secret, the three headers and the body;
- ``secret``: prints the running local stack's signing secret in ``whsec_`` form;
- ``rotate-secret``: stores a new ``whsec_`` key as the secret's AWSCURRENT version (Secrets
  Manager keeps the old one as AWSPREVIOUS), in the running local stack, or with ``--secret-id``
  in AWS with the usual credentials. Deliveries carry both signatures for
  WebhookSecretOverlapSeconds afterwards;
- ``listen``: a receiver on 127.0.0.1 that verifies every delivery, prints one line for each,
  answers from a script (``--answer 500,500,200``: retries, seen from the receiving side) and ends
  after ``--count`` accepted deliveries, for trying webhooks against the local stack.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SECRET_LOGICAL_ID = "WebhookSigningSecret"  # noqa: S105 (a resource's logical id)
SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
SECRET_VARIABLE = "IMAGEGEN_WEBHOOK_SECRET"  # noqa: S105 (a variable's name)
EXIT_UNVERIFIED = 1
EXIT_NO_STACK = 2
EXIT_PORT_IN_USE = 3
EXIT_TIMED_OUT = 124  # as timeout(1)
LISTEN_PORT = 8787
INVALID_SIGNATURE_STATUS = 400
"""What ``listen`` answers a delivery that does not verify, as a receiver should (never 2xx)."""


def whsec_form(value: str) -> str:
    """A stored secret as receivers use it. The value CloudFormation generates is 32 letters and
    digits, the base64 of a 24-byte key, without the prefix."""
    text = value.strip()
    return text if text.startswith(SECRET_PREFIX) else SECRET_PREFIX + text


def verify_delivery(secret: str, headers: dict[str, str], body: bytes) -> Any:
    """The delivery's payload, parsed; raises standardwebhooks' WebhookVerificationError if the
    signature, or the timestamp (5 minutes' tolerance), does not hold."""
    from standardwebhooks.webhooks import Webhook

    return Webhook(whsec_form(secret)).verify(body, headers)


_STATUS_OF_TYPE = {
    "image.generated": "SUCCEEDED",
    "image.generation_failed": "FAILED",
    "image.generation_cancelled": "ABORTED",
    "image.generation_progress": "RUNNING",
}
"""A delivery's ``type`` -> the status the job has (as ``GET /generate/{id}`` says it)."""


def job_status(payload: Any) -> str:
    """The job's status as a delivery tells it: ``SUCCEEDED``, ``FAILED CONTENT_FILTERED``,
    ``RUNNING generating 24%``, ...; ``?`` for a payload that is not one of ours."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        return "?"
    data = payload["data"]
    status = _STATUS_OF_TYPE.get(str(payload.get("type")), "?")
    if status == "FAILED" and isinstance(data.get("error"), dict):
        return f"{status} {data['error'].get('code', '?')}"
    if status == "RUNNING":
        progress = data.get("progress")
        percent = f" {progress.get('percent'):g}%" if isinstance(progress, dict) else ""
        return f"{status} {data.get('stage', '?')}{percent}"
    return status


@dataclass(frozen=True)
class ReceivedDelivery:
    """One POST the listener received, and what it made of it."""

    webhook_id: str
    event_type: str
    execution_id: str
    status: str
    """The job's status the delivery tells (``job_status``)."""
    valid: bool
    problem: str
    """Why the signature does not hold ('' when it does)."""
    answered: int

    def line(self) -> str:
        signature = "signature valid" if self.valid else f"signature INVALID ({self.problem})"
        return (
            f"{self.webhook_id} {self.event_type} {self.execution_id} {self.status}: "
            f"{signature}, answered {self.answered}"
        )


def describe_delivery(secret: str, headers: dict[str, str], body: bytes) -> ReceivedDelivery:
    """A received POST, verified; ``answered`` is 0 here (the listener decides it)."""
    from standardwebhooks.webhooks import WebhookVerificationError

    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        payload, valid, problem = verify_delivery(secret, lowered, body), True, ""
    except (WebhookVerificationError, ValueError) as error:
        valid, problem = False, str(error) or type(error).__name__
        try:  # still say what it claims to be, marked invalid
            payload = json.loads(body)
        except ValueError:
            payload = None
    data = payload.get("data") if isinstance(payload, dict) else None
    return ReceivedDelivery(
        webhook_id=lowered.get("webhook-id") or "-",
        event_type=str(payload.get("type")) if isinstance(payload, dict) else "?",
        execution_id=str(data.get("execution_id")) if isinstance(data, dict) else "?",
        status=job_status(payload),
        valid=valid,
        problem=problem,
        answered=0,
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 resets connections when many deliveries come at once.
    request_queue_size = 128


class WebhookListener:
    """A receiver on 127.0.0.1 (any path): verifies each POST with ``secret``; answers a valid one
    with the next of ``answers`` (the last repeats), an invalid one with 400. ``on_delivery`` is
    called with each, after its answer was sent. A delivery is accepted when it was valid and
    answered 2xx; ``wait_for_accepted`` waits for a number of those."""

    def __init__(
        self,
        secret: str,
        answers: Sequence[int] = (200,),
        port: int = LISTEN_PORT,
        on_delivery: Callable[[ReceivedDelivery], None] = lambda delivery: None,
    ) -> None:
        self._secret = whsec_form(secret)
        self._answers = list(answers) or [200]
        self._on_delivery = on_delivery
        self._changed = threading.Condition()
        self.received: list[ReceivedDelivery] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                seen = describe_delivery(listener._secret, dict(self.headers.items()), body)
                status = listener._next_answer() if seen.valid else INVALID_SIGNATURE_STATUS
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                # Recorded after the answer is out: the caller may stop the listener then.
                listener._record(replace(seen, answered=status))

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per delivery is printed by on_delivery

        self._server = _Server(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _next_answer(self) -> int:
        with self._changed:
            return self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]

    def _record(self, delivery: ReceivedDelivery) -> None:
        with self._changed:
            self.received.append(delivery)
            self._on_delivery(delivery)
            self._changed.notify_all()

    def _accepted(self) -> int:
        return sum(1 for seen in self.received if seen.valid and 200 <= seen.answered < 300)

    @property
    def accepted(self) -> int:
        """How many deliveries were valid and answered 2xx."""
        with self._changed:
            return self._accepted()

    def wait_for_received(self, count: int, timeout_s: float | None) -> list[ReceivedDelivery]:
        """The deliveries received (answered and recorded), once there are ``count`` of them;
        TimeoutError if there are not within ``timeout_s``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received) >= count, timeout_s):
                raise TimeoutError(f"{len(self.received)} of {count} deliveries in {timeout_s} s")
            return list(self.received)

    def wait_for_accepted(self, count: int, timeout_s: float | None) -> bool:
        """Whether ``count`` deliveries were accepted within ``timeout_s`` (None: no limit)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._accepted() >= count, timeout_s)

    def start(self) -> WebhookListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_answers(text: str) -> list[int]:
    """``--answer``: HTTP statuses, comma-separated (``500,500,200``)."""
    try:
        answers = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not statuses: {text!r} (e.g. 500,500,200)") from None
    if not answers or not all(100 <= answer <= 599 for answer in answers):
        raise argparse.ArgumentTypeError(f"statuses are 100..599: {text!r}")
    return answers


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def add_webhook_commands(commands: Any, default_template: Path) -> None:
    """The `webhook` command group, under the CLI's subcommands."""
    webhook = commands.add_parser("webhook", help="verify a delivery; print or rotate the secret")
    actions = webhook.add_subparsers(dest="webhook_command", required=True)

    verify = actions.add_parser(
        "verify", help="verify a delivery's signature (Standard Webhooks), print its payload"
    )
    verify.add_argument(
        "--secret",
        default=os.environ.get(SECRET_VARIABLE),
        help=f"whsec_... (default: ${SECRET_VARIABLE})",
    )
    verify.add_argument("--id", required=True, help="the webhook-id header")
    verify.add_argument("--timestamp", required=True, help="the webhook-timestamp header")
    verify.add_argument("--signature", required=True, help="the webhook-signature header")
    verify.add_argument(
        "--body", required=True, help="file holding the exact body received ('-' for stdin)"
    )
    verify.set_defaults(handler=cmd_verify)

    secret = actions.add_parser("secret", help="print the running local stack's signing secret")
    secret.add_argument("--template", default=str(default_template))
    secret.set_defaults(handler=cmd_secret)

    rotate = actions.add_parser(
        "rotate-secret", help="store a new signing key (the old one still signs for the overlap)"
    )
    rotate.add_argument("--template", default=str(default_template))
    rotate.add_argument(
        "--secret-id",
        default=None,
        help="the secret's ARN in AWS (the stack's WebhookSigningSecretArn output); default: "
        "the running local stack's",
    )
    rotate.set_defaults(handler=cmd_rotate_secret)

    listen = actions.add_parser(
        "listen",
        help="receive deliveries on 127.0.0.1, verify each, print one line for each",
        description="A receiver on 127.0.0.1 (any path) for webhooks of the local stack (run it "
        "with --allow-loopback-webhooks). Each delivery is verified and printed: webhook-id, "
        "type, job, the job's status, whether the signature is valid, the answer. A valid one is "
        "answered from --answer, an invalid one 400. Exit status: 0 after --count accepted (valid, "
        "answered 2xx) deliveries, or at --timeout or Ctrl-C without --count; 1 if any delivery "
        "did not verify; 2 no secret; 3 the port is taken; 124 --count not reached in --timeout.",
    )
    listen.add_argument("--port", type=int, default=LISTEN_PORT, help="default %(default)s")
    listen.add_argument(
        "--secret",
        default=os.environ.get(SECRET_VARIABLE),
        help=f"whsec_... (default: ${SECRET_VARIABLE}, else the running local stack's)",
    )
    listen.add_argument("--template", default=str(default_template))
    listen.add_argument(
        "--count", type=int, default=None, help="exit after this many accepted deliveries"
    )
    listen.add_argument(
        "--timeout", type=float, default=None, help="seconds to listen at most (default: no limit)"
    )
    listen.add_argument(
        "--answer",
        type=parse_answers,
        default=[200],
        help="statuses for valid deliveries, in turn, the last repeating (e.g. 500,500,200: "
        "two failures, so the delivery is retried); default 200",
    )
    listen.add_argument("--json", action="store_true", help="one JSON object per delivery")
    listen.set_defaults(handler=cmd_listen)


def cmd_verify(args: argparse.Namespace) -> int:
    from standardwebhooks.webhooks import WebhookVerificationError

    if not args.secret:
        _err(f"no secret: pass --secret or set {SECRET_VARIABLE}")
        return EXIT_UNVERIFIED
    body = sys.stdin.buffer.read() if args.body == "-" else Path(args.body).read_bytes()
    headers = {
        "webhook-id": args.id,
        "webhook-timestamp": args.timestamp,
        "webhook-signature": args.signature,
    }
    try:
        payload = verify_delivery(args.secret, headers, body)
    except (WebhookVerificationError, ValueError) as error:
        _err(f"NOT verified: {error}")
        return EXIT_UNVERIFIED
    _out(json.dumps(payload, indent=2))
    _err(f"verified: {args.id} ({payload.get('type')})")
    return 0


def _local_secret(template: Path) -> tuple[Any, str]:
    """(a Secrets Manager client of the running local stack, the secret's ARN)."""
    from imagegen.local.running_stack import (
        NoRunningStackError,
        find_running_stack,
        local_stack_session,
    )

    record = find_running_stack(template)
    session = local_stack_session(record)
    cloudformation = session.client("cloudformation", endpoint_url=record.aws_endpoint_url)
    # All of them, not DescribeStackResource: moto's fails (500) on a stack holding a resource type
    # it does not model, as ours do (UsagePlan, BucketPolicy, ...).
    resources = cloudformation.describe_stack_resources(StackName=record.stack_name)
    secret_ids = [
        resource["PhysicalResourceId"]
        for resource in resources["StackResources"]
        if resource.get("LogicalResourceId") == SECRET_LOGICAL_ID
    ]
    if not secret_ids:
        raise NoRunningStackError(f"stack {record.stack_name} has no {SECRET_LOGICAL_ID}")
    return (
        session.client("secretsmanager", endpoint_url=record.aws_endpoint_url),
        secret_ids[0],
    )


def cmd_secret(args: argparse.Namespace) -> int:
    from imagegen.local.running_stack import NoRunningStackError

    try:
        secrets, secret_id = _local_secret(Path(args.template).resolve())
    except NoRunningStackError as error:
        _err(str(error))
        return EXIT_NO_STACK
    _out(whsec_form(secrets.get_secret_value(SecretId=secret_id)["SecretString"]))
    return 0


def cmd_rotate_secret(args: argparse.Namespace) -> int:
    import boto3

    from imagegen.local.running_stack import NoRunningStackError

    if args.secret_id:
        secrets, secret_id = boto3.client("secretsmanager"), args.secret_id
    else:
        try:
            secrets, secret_id = _local_secret(Path(args.template).resolve())
        except NoRunningStackError as error:
            _err(str(error))
            return EXIT_NO_STACK
    # 32 random bytes: Standard Webhooks asks for 24 to 64.
    new_secret = SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()
    version = secrets.put_secret_value(SecretId=secret_id, SecretString=new_secret)
    _out(new_secret)
    _err(
        f"stored as AWSCURRENT (version {version.get('VersionId')}); the previous key keeps "
        "signing deliveries too for WebhookSecretOverlapSeconds: give receivers the new one"
    )
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    from imagegen.local.running_stack import NoRunningStackError

    secret = args.secret
    if not secret:
        try:
            secrets, secret_id = _local_secret(Path(args.template).resolve())
            secret = secrets.get_secret_value(SecretId=secret_id)["SecretString"]
        except NoRunningStackError as error:
            _err(f"no secret: pass --secret or set {SECRET_VARIABLE} ({error})")
            return EXIT_NO_STACK
    printing = threading.Lock()

    def show(delivery: ReceivedDelivery) -> None:
        with printing:
            _out(json.dumps(asdict(delivery)) if args.json else delivery.line())

    try:
        listener = WebhookListener(secret, args.answer, args.port, on_delivery=show)
    except OSError as error:
        _err(f"cannot listen on 127.0.0.1:{args.port}: {error}")
        return EXIT_PORT_IN_USE
    with listener:
        _err(f"listening on http://127.0.0.1:{listener.port}/ (any path)")
        try:
            reached = listener.wait_for_accepted(
                args.count if args.count is not None else sys.maxsize, args.timeout
            )
        except KeyboardInterrupt:
            reached = args.count is None
    if any(not delivery.valid for delivery in listener.received):
        return EXIT_UNVERIFIED
    if not reached and args.count is not None:
        _err(f"{listener.accepted} of {args.count} deliveries accepted in {args.timeout} s")
        return EXIT_TIMED_OUT
    return 0
