"""WebhookDeliveryFunction's plain modules: planning, signing, backoff, and the outcomes of real
POSTs to a receiver on 127.0.0.1."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from imagegen_common.models import WebhookEvent, WebhookRequest
from imagegen_common.webhook_target import check_webhook_target
from tests.conftest import import_function
from tests.webhook_receiver import HANG, WebhookReceiver

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()


@pytest.fixture(scope="module")
def deliveries() -> Any:
    return import_function("webhook_delivery", "deliveries")


@pytest.fixture(scope="module")
def signing() -> Any:
    return import_function("webhook_delivery", "signing")


@pytest.fixture(scope="module")
def pinned_http() -> Any:
    return import_function("webhook_delivery", "pinned_http")


def bus_event(detail_type: str = "Image Generated", **detail: Any) -> dict[str, Any]:
    return {
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": detail_type,
        "source": "imagegen",
        "account": "123456789012",
        "time": "2026-11-25T12:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {"schema_version": "1.1", "execution_id": "job-1", **detail},
    }


# --- Planning ----------------------------------------------------------------------------------


def test_payload_is_standard_webhooks_shaped_with_a_stable_id(deliveries: Any) -> None:
    event = deliveries.parse_event(json.dumps(bus_event(images=[])))
    webhook = WebhookRequest(url="https://hooks.example.com/h")  # type: ignore[arg-type]
    delivery = deliveries.plan_delivery(event, webhook, False, "")
    assert delivery.webhook_id == "msg_6a7e8feb-b491-4cf7-a9f1-bf3703467718"
    assert delivery.per_job is True
    body = json.loads(delivery.body)
    assert body == {
        "type": "image.generated",
        "timestamp": "2026-11-25T12:00:00Z",
        "data": bus_event(images=[])["detail"],
    }


@pytest.mark.parametrize(
    ("detail_type", "events", "delivered"),
    [
        ("Image Generated", [WebhookEvent.COMPLETED], True),
        ("Image Generation Failed", [WebhookEvent.COMPLETED], True),
        ("Image Generation Cancelled", [WebhookEvent.COMPLETED], True),
        ("Image Generation Progress", [WebhookEvent.COMPLETED], False),
        ("Image Generation Progress", [WebhookEvent.PROGRESS], True),
        ("Image Generated", [WebhookEvent.PROGRESS], False),
    ],
)
def test_only_subscribed_events_are_delivered(
    deliveries: Any, detail_type: str, events: list[WebhookEvent], delivered: bool
) -> None:
    event = deliveries.parse_event(json.dumps(bus_event(detail_type)))
    webhook = WebhookRequest(url="https://h.example/", events=events)  # type: ignore[arg-type]
    assert (deliveries.plan_delivery(event, webhook, False, "") is not None) is delivered


def test_the_stack_wide_url_takes_completed_events_of_jobs_without_a_webhook(
    deliveries: Any,
) -> None:
    completed = deliveries.parse_event(json.dumps(bus_event()))
    progress = deliveries.parse_event(json.dumps(bus_event("Image Generation Progress")))
    delivery = deliveries.plan_delivery(completed, None, False, "https://default.example/h")
    assert delivery.url == "https://default.example/h"
    assert delivery.per_job is False
    assert deliveries.plan_delivery(progress, None, False, "https://default.example/h") is None
    assert deliveries.plan_delivery(completed, None, False, "") is None


def test_a_disabled_webhook_gets_nothing(deliveries: Any) -> None:
    event = deliveries.parse_event(json.dumps(bus_event()))
    webhook = WebhookRequest(url="https://h.example/")  # type: ignore[arg-type]
    assert deliveries.plan_delivery(event, webhook, True, "https://default.example/") is None


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "{}",
        json.dumps(bus_event("Something Else")),
        json.dumps({**bus_event(), "detail": {}}),
    ],
)
def test_messages_that_are_not_our_events_are_not_delivered(deliveries: Any, body: str) -> None:
    assert deliveries.parse_event(body) is None


# --- Signing -----------------------------------------------------------------------------------


def test_signature_verifies_with_standardwebhooks(signing: Any) -> None:
    body = '{"type":"image.generated","data":{}}'
    now = datetime.now(UTC)
    headers = signing.signature_headers([KEY], "msg_1", now, body)
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("generated", "failed"), headers)
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_two_keys_give_two_signatures_each_verifying(signing: Any) -> None:
    old = bytes(range(100, 132))
    body = "{}"
    headers = signing.signature_headers([KEY, old], "msg_2", datetime.now(UTC), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(KEY).verify(body, headers)
    Webhook(old).verify(body, headers)


@pytest.mark.parametrize(
    ("stored", "key"),
    [
        (SECRET, KEY),
        (base64.b64encode(KEY).decode(), KEY),  # bare base64
        ("AbCdEfGhIjKlMnOpQrStUvWxYz012345", base64.b64decode("AbCdEfGhIjKlMnOpQrStUvWxYz012345")),
    ],
)
def test_stored_secrets_in_whsec_or_bare_form_decode(signing: Any, stored: str, key: bytes) -> None:
    assert signing.decode_secret(stored) == key
    assert signing.whsec_form(stored).startswith("whsec_")
    assert Webhook(signing.whsec_form(stored))._whsecret == key


@pytest.mark.parametrize("stored", ["whsec_not base64!", "whsec_", "c2hvcnQ="])
def test_unusable_secrets_are_refused(signing: Any, stored: str) -> None:
    with pytest.raises(signing.InvalidWebhookSecretError):
        signing.decode_secret(stored)


def test_keys_overlap_after_a_rotation_then_only_the_current_one_signs(signing: Any) -> None:
    with mock_aws():
        secrets = boto3.client("secretsmanager")
        arn = secrets.create_secret(Name="webhook", SecretString=SECRET)["ARN"]
        keys = signing.SigningKeys(secrets, arn, overlap=timedelta(hours=1), cache_s=0)
        assert keys.current() == [KEY]
        new_key = bytes(range(50, 82))
        secrets.put_secret_value(
            SecretId=arn, SecretString="whsec_" + base64.b64encode(new_key).decode()
        )
        assert keys.current() == [new_key, KEY]
        later = signing.SigningKeys(
            secrets,
            arn,
            overlap=timedelta(hours=1),
            cache_s=0,
            now=lambda: datetime.now(UTC) + timedelta(hours=2),
        )
        assert later.current() == [new_key]


def test_keys_are_cached(signing: Any) -> None:
    class CountingSecrets:
        calls = 0

        def get_secret_value(self, **_: Any) -> dict[str, Any]:
            self.calls += 1
            return {"SecretString": SECRET, "CreatedDate": datetime(2020, 1, 1, tzinfo=UTC)}

    client = CountingSecrets()
    keys = signing.SigningKeys(client, "arn", overlap=timedelta(0), cache_s=3600)
    assert keys.current() == keys.current() == [KEY]
    assert client.calls == 1


# --- Backoff -----------------------------------------------------------------------------------


SCHEDULE = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


def highest(low: float, high: float) -> float:
    return high


def lowest(low: float, high: float) -> float:
    return low


@pytest.mark.parametrize(
    ("attempt", "delay"), [(1, 5), (2, 300), (3, 1800), (7, 36000), (8, 36000), (50, 36000)]
)
def test_the_delay_is_jittered_below_the_schedule_step(
    deliveries: Any, attempt: int, delay: int
) -> None:
    assert deliveries.retry_delay_s(attempt, SCHEDULE, None, highest) == delay
    assert deliveries.retry_delay_s(attempt, SCHEDULE, None, lowest) == 0


def test_full_jitter_spreads_the_delays(deliveries: Any) -> None:
    delays = {deliveries.retry_delay_s(3, SCHEDULE) for _ in range(200)}
    assert len(delays) > 50
    assert all(0 <= delay <= 1800 for delay in delays)


def test_retry_after_is_a_floor_capped_at_sqs_limit(deliveries: Any) -> None:
    assert deliveries.retry_delay_s(1, SCHEDULE, 120.0, highest) == 120
    assert deliveries.retry_delay_s(2, SCHEDULE, 120.0, highest) == 300
    assert deliveries.retry_delay_s(1, SCHEDULE, 10**9, lowest) == deliveries.MAX_VISIBILITY_SECONDS
    assert deliveries.MAX_VISIBILITY_SECONDS <= 43_200


def test_retry_after_as_seconds_or_http_date(deliveries: Any) -> None:
    assert deliveries.parse_retry_after("120", NOW) == 120
    later = format_datetime(NOW + timedelta(minutes=2), usegmt=True)
    assert deliveries.parse_retry_after(later, NOW) == 120
    earlier = format_datetime(NOW - timedelta(minutes=2), usegmt=True)
    assert deliveries.parse_retry_after(earlier, NOW) == 0
    assert deliveries.parse_retry_after("soon", NOW) is None
    assert deliveries.parse_retry_after(None, NOW) is None


# --- Outcomes against a receiver on 127.0.0.1 --------------------------------------------------


class Recorder:
    def __init__(self, webhook: WebhookRequest | None = None, disabled: bool = False) -> None:
        self.webhook = webhook
        self.disabled = disabled
        self.disabled_reasons: list[str] = []
        self.visibility: list[int] = []
        self.logs: list[str] = []


def deliverer(
    deliveries: Any,
    signing: Any,
    pinned_http: Any,
    recorder: Recorder,
    *,
    default_url: str = "",
    attempts: int = 3,
    timeout_s: float = 2.0,
) -> Any:
    def disable(job_id: str, reason: str) -> None:
        recorder.disabled_reasons.append(reason)

    def post(url: str, addresses: list[str], headers: dict[str, str], body: bytes) -> Any:
        return pinned_http.post_pinned(url, addresses, headers, body, timeout_s=timeout_s)

    return deliveries.Deliverer(
        webhook_of=lambda job_id: (recorder.webhook, recorder.disabled),
        disable_webhook=disable,
        check_target=lambda url: check_webhook_target(url, allow_loopback=True),
        signing_headers=lambda webhook_id, at, body: signing.signature_headers(
            [KEY], webhook_id, at, body
        ),
        post=post,
        set_visibility=lambda handle, seconds: recorder.visibility.append(seconds),
        default_url=default_url,
        schedule_s=[1.0, 1.0],
        attempts=attempts,
        log=lambda message, **_: recorder.logs.append(message),
    )


def test_a_2xx_delivers_a_signed_body(deliveries: Any, signing: Any, pinned_http: Any) -> None:
    with WebhookReceiver([204]) as receiver:
        recorder = Recorder(WebhookRequest(url=receiver.url("/h?x=1")))  # type: ignore[arg-type]
        outcome = deliverer(deliveries, signing, pinned_http, recorder).handle(
            json.dumps(bus_event()), 1, "receipt"
        )
        assert outcome is deliveries.Outcome.DELIVERED
        [received] = receiver.received
    assert received.path == "/h?x=1"
    assert received.headers["content-type"] == "application/json"
    assert received.headers["host"] == f"127.0.0.1:{receiver.port}"
    payload = Webhook(SECRET).verify(received.body, received.headers)
    assert payload["type"] == "image.generated"
    assert recorder.visibility == []


def test_410_disables_the_jobs_webhook(deliveries: Any, signing: Any, pinned_http: Any) -> None:
    with WebhookReceiver([410]) as receiver:
        recorder = Recorder(WebhookRequest(url=receiver.url()))  # type: ignore[arg-type]
        outcome = deliverer(deliveries, signing, pinned_http, recorder).handle(
            json.dumps(bus_event()), 1, "receipt"
        )
    assert outcome is deliveries.Outcome.GONE
    assert recorder.disabled_reasons == ["the receiver answered 410 Gone"]
    assert recorder.visibility == []


def test_410_from_the_stack_wide_url_disables_nothing(
    deliveries: Any, signing: Any, pinned_http: Any
) -> None:
    with WebhookReceiver([410]) as receiver:
        recorder = Recorder(None)
        outcome = deliverer(
            deliveries, signing, pinned_http, recorder, default_url=receiver.url()
        ).handle(json.dumps(bus_event()), 1, "receipt")
    assert outcome is deliveries.Outcome.GONE
    assert recorder.disabled_reasons == []


@pytest.mark.parametrize("answer", [500, 503, 429, 302, 400, (503, {"Retry-After": "7"})], ids=str)
def test_other_answers_are_retried_by_visibility(
    deliveries: Any, signing: Any, pinned_http: Any, answer: Any
) -> None:
    with WebhookReceiver([answer]) as receiver:
        recorder = Recorder(WebhookRequest(url=receiver.url()))  # type: ignore[arg-type]
        with pytest.raises(deliveries.RetryLaterError, match="attempt 1 of 3"):
            deliverer(deliveries, signing, pinned_http, recorder).handle(
                json.dumps(bus_event()), 1, "receipt"
            )
        assert len(receiver.received) == 1  # a redirect is not followed
    expected_floor = 7 if isinstance(answer, tuple) else 0
    [delay] = recorder.visibility
    assert expected_floor <= delay <= max(1, expected_floor)


def test_the_last_attempt_leaves_the_message_to_the_redrive(
    deliveries: Any, signing: Any, pinned_http: Any
) -> None:
    with WebhookReceiver([500]) as receiver:
        recorder = Recorder(WebhookRequest(url=receiver.url()))  # type: ignore[arg-type]
        with pytest.raises(deliveries.RetryLaterError, match="giving up"):
            deliverer(deliveries, signing, pinned_http, recorder).handle(
                json.dumps(bus_event()), 3, "receipt"
            )
    assert recorder.visibility == [0]


def test_a_receiver_that_does_not_answer_in_time_is_retried(
    deliveries: Any, signing: Any, pinned_http: Any
) -> None:
    with WebhookReceiver([HANG]) as receiver:
        recorder = Recorder(WebhookRequest(url=receiver.url()))  # type: ignore[arg-type]
        with pytest.raises(deliveries.RetryLaterError, match="DeliveryConnectionError"):
            deliverer(deliveries, signing, pinned_http, recorder, timeout_s=0.5).handle(
                json.dumps(bus_event()), 1, "receipt"
            )
    assert len(recorder.visibility) == 1


def test_a_receiver_that_is_down_is_retried(
    deliveries: Any, signing: Any, pinned_http: Any
) -> None:
    receiver = WebhookReceiver([200]).start()
    url = receiver.url()
    receiver.stop()  # the port is closed: connection refused
    recorder = Recorder(WebhookRequest(url=url))  # type: ignore[arg-type]
    with pytest.raises(deliveries.RetryLaterError, match="ConnectionRefusedError"):
        deliverer(deliveries, signing, pinned_http, recorder).handle(
            json.dumps(bus_event()), 2, "receipt"
        )


def test_an_unsafe_target_is_never_contacted_and_disabled(
    deliveries: Any, signing: Any, pinned_http: Any
) -> None:
    recorder = Recorder(WebhookRequest(url="https://10.0.0.8/h"))  # type: ignore[arg-type]
    outcome = deliverer(deliveries, signing, pinned_http, recorder).handle(
        json.dumps(bus_event()), 1, "receipt"
    )
    assert outcome is deliveries.Outcome.GONE
    assert recorder.disabled_reasons == ["unsafe webhook target: private_address"]


def test_pinned_post_connects_to_the_approved_address_not_the_host(pinned_http: Any) -> None:
    """The URL names a host that does not resolve; the connection goes to the approved address,
    and the Host header still names the URL's host."""
    with WebhookReceiver([200]) as receiver:
        answer = pinned_http.post_pinned(
            f"http://hooks.invalid:{receiver.port}/h",
            ["127.0.0.1"],
            {"webhook-id": "msg_x"},
            b"{}",
            timeout_s=2,
        )
        [received] = receiver.received
    assert answer.status == 200
    assert received.headers["host"] == f"hooks.invalid:{receiver.port}"
