"""`imagegen webhook verify` and `listen`: a receiver's checks of a delivery (standardwebhooks)."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from imagegen.cli import main
from imagegen.local.running_stack import STATE_DIR_VARIABLE
from imagegen.webhooks import SECRET_VARIABLE, WebhookListener, job_status, whsec_form

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def signed(body: str, secret: str = SECRET) -> tuple[str, str]:
    now = datetime.now(UTC)
    return str(int(now.timestamp())), Webhook(secret).sign("msg_1", now, body)


def test_verify_accepts_a_signed_delivery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = json.dumps({"type": "image.generated", "timestamp": "t", "data": {"execution_id": "j"}})
    (tmp_path / "body.json").write_text(body)
    timestamp, signature = signed(body)
    argv = ["webhook", "verify", "--secret", SECRET, "--id", "msg_1", "--timestamp", timestamp]
    code = main([*argv, "--signature", signature, "--body", str(tmp_path / "body.json")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["data"] == {"execution_id": "j"}
    assert "verified: msg_1 (image.generated)" in out.err


@pytest.mark.parametrize("tamper", ["body", "secret", "id"])
def test_verify_refuses_a_tampered_delivery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: str
) -> None:
    body = '{"type":"image.generated","data":{}}'
    timestamp, signature = signed(body)
    (tmp_path / "body.json").write_text(
        body.replace("generated", "failed") if tamper == "body" else body
    )
    secret = "whsec_" + base64.b64encode(bytes(32)).decode() if tamper == "secret" else SECRET
    webhook_id = "msg_2" if tamper == "id" else "msg_1"
    code = main(
        [
            "webhook",
            "verify",
            "--secret",
            secret,
            "--id",
            webhook_id,
            "--timestamp",
            timestamp,
            "--signature",
            signature,
            "--body",
            str(tmp_path / "body.json"),
        ]
    )
    assert code == 1
    assert "NOT verified" in capsys.readouterr().err


def test_a_generated_secret_is_used_in_whsec_form() -> None:
    generated = "AbCdEfGhIjKlMnOpQrStUvWxYz012345"  # what Secrets Manager generates: 32 alnum
    assert whsec_form(generated) == "whsec_" + generated
    assert whsec_form(SECRET) == SECRET


# --- `imagegen webhook listen` -------------------------------------------------------------------

GENERATED = json.dumps(
    {"type": "image.generated", "timestamp": "t", "data": {"execution_id": "job-1"}},
    separators=(",", ":"),
)


def delivery_headers(body: str, webhook_id: str = "msg_1", secret: str = SECRET) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, body),
    }


def post(port: int, body: str, headers: dict[str, str]) -> int:
    response = httpx.post(f"http://127.0.0.1:{port}/hooks", content=body, headers=headers)
    return response.status_code


def test_the_listener_accepts_a_signed_delivery_and_says_what_it_tells() -> None:
    with WebhookListener(SECRET, port=0) as listener:
        assert post(listener.port, GENERATED, delivery_headers(GENERATED)) == 200

        assert listener.wait_for_accepted(1, timeout_s=10)
        [seen] = listener.wait_for_received(1, timeout_s=10)
    assert (seen.webhook_id, seen.event_type, seen.execution_id) == (
        "msg_1",
        "image.generated",
        "job-1",
    )
    assert seen.valid
    assert seen.line() == "msg_1 image.generated job-1 SUCCEEDED: signature valid, answered 200"


@pytest.mark.parametrize("tamper", ["body", "secret"])
def test_the_listener_reports_a_tampered_delivery_invalid_and_refuses_it(tamper: str) -> None:
    other_secret = "whsec_" + base64.b64encode(bytes(32)).decode()
    headers = delivery_headers(GENERATED, secret=other_secret if tamper == "secret" else SECRET)
    body = GENERATED.replace("job-1", "job-2") if tamper == "body" else GENERATED
    with WebhookListener(SECRET, port=0) as listener:
        assert post(listener.port, body, headers) == 400

        [seen] = listener.wait_for_received(1, timeout_s=10)  # recorded once it has answered
    assert not seen.valid
    assert "signature INVALID (No matching signature found), answered 400" in seen.line()
    assert listener.accepted == 0


def test_the_listener_answers_in_turn_and_repeats_the_last() -> None:
    with WebhookListener(SECRET, answers=[500, 503, 200], port=0) as listener:
        statuses = [post(listener.port, GENERATED, delivery_headers(GENERATED)) for _ in range(4)]
        received = listener.wait_for_received(4, timeout_s=10)

    assert statuses == [500, 503, 200, 200]
    assert [seen.answered for seen in received] == statuses
    assert listener.accepted == 2


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"type": "image.generated", "data": {}}, "SUCCEEDED"),
        (
            {"type": "image.generation_failed", "data": {"error": {"code": "TIMEOUT"}}},
            "FAILED TIMEOUT",
        ),
        ({"type": "image.generation_cancelled", "data": {}}, "ABORTED"),
        (
            {
                "type": "image.generation_progress",
                "data": {"stage": "generating", "progress": {"percent": 24.0}},
            },
            "RUNNING generating 24%",
        ),
        (
            {"type": "image.generation_progress", "data": {"stage": "queued", "progress": None}},
            "RUNNING queued",
        ),
        ({"type": "something.else", "data": {}}, "?"),
        ("not an object", "?"),
    ],
)
def test_a_delivery_tells_the_jobs_status(payload: object, status: str) -> None:
    assert job_status(payload) == status


def listen(*options: str) -> tuple[subprocess.Popen[str], int]:
    """`imagegen webhook listen` in a process of its own, and the port it listens on."""
    process = subprocess.Popen(
        [sys.executable, "-m", "imagegen.cli", "webhook", "listen", "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    ready = process.stderr.readline()  # the first line, or '' once it ended (its --timeout)
    port = re.search(r"http://127\.0\.0\.1:(\d+)/", ready)
    if port is None:
        process.kill()
        raise AssertionError(f"not listening: {ready}{process.communicate(timeout=10)}")
    return process, int(port.group(1))


def test_listen_exits_after_count_accepted_deliveries() -> None:
    process, port = listen(
        "--secret", SECRET, "--count", "2", "--answer", "500,200", "--timeout", "60"
    )
    statuses = [post(port, GENERATED, delivery_headers(GENERATED, f"msg_{n}")) for n in range(3)]

    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert statuses == [500, 200, 200]
    assert out.splitlines() == [
        f"msg_{n} image.generated job-1 SUCCEEDED: signature valid, answered {status}"
        for n, status in enumerate(statuses)
    ]


def test_listen_exits_1_when_a_delivery_did_not_verify() -> None:
    process, port = listen("--secret", SECRET, "--count", "1", "--json", "--timeout", "60")
    tampered = delivery_headers(GENERATED, secret="whsec_" + base64.b64encode(bytes(32)).decode())
    statuses = [post(port, GENERATED, tampered), post(port, GENERATED, delivery_headers(GENERATED))]

    out, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert statuses == [400, 200]
    assert [json.loads(line)["valid"] for line in out.splitlines()] == [False, True]


def test_listen_exits_124_when_fewer_came_within_the_timeout() -> None:
    process, _ = listen("--secret", SECRET, "--count", "1", "--timeout", "0.2")

    _, err = process.communicate(timeout=30)
    assert process.returncode == 124
    assert "0 of 1 deliveries accepted in 0.2 s" in err


def test_listen_without_a_secret_or_a_running_stack_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(SECRET_VARIABLE, raising=False)
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path))  # no record there

    assert main(["webhook", "listen", "--port", "0", "--count", "1"]) == 2
    assert "no secret: pass --secret or set IMAGEGEN_WEBHOOK_SECRET" in capsys.readouterr().err


def test_listen_on_a_taken_port_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        assert main(["webhook", "listen", "--port", str(port), "--secret", SECRET]) == 3
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
