"""The signing keys of webhook deliveries: Secrets Manager holds them, standardwebhooks signs.

The secret (WebhookSigningSecret) holds one key per version, in Standard Webhooks' ``whsec_`` form
(``whsec_`` + base64 of 24-64 random bytes). The value CloudFormation generates when the stack is
created is 32 letters and digits, not in that form: it is taken as the base64 of 24 bytes, so its
``whsec_`` form is just ``whsec_`` + the stored value (``imagegen webhook secret`` prints it).

Rotation (``imagegen webhook rotate-secret``, or ``aws secretsmanager put-secret-value``) makes a
new AWSCURRENT version; Secrets Manager moves the old one to AWSPREVIOUS. While the current version
is younger than the overlap (WEBHOOK_SECRET_OVERLAP_SECONDS), deliveries carry two signatures, the
current key's first, separated by a space, as Standard Webhooks allows: a receiver still on the old
key and one already on the new key both verify.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from botocore.exceptions import ClientError
from standardwebhooks.webhooks import Webhook

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
MIN_KEY_BYTES: Final = 16
CURRENT: Final = "AWSCURRENT"
PREVIOUS: Final = "AWSPREVIOUS"


class InvalidWebhookSecretError(ValueError):
    """A stored secret that is not a usable key (not base64, or too short)."""


def decode_secret(value: str) -> bytes:
    """The key bytes of ``whsec_<base64>`` or of a bare base64 value."""
    text = value.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidWebhookSecretError(
            "the webhook secret is not whsec_ followed by base64"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise InvalidWebhookSecretError(
            f"the webhook secret has {len(key)} bytes; at least {MIN_KEY_BYTES} are needed"
        )
    return key


def whsec_form(value: str) -> str:
    """The stored value as receivers use it: ``whsec_`` + base64 (checked to be a usable key)."""
    text = value.strip()
    decode_secret(text)
    return text if text.startswith(SECRET_PREFIX) else SECRET_PREFIX + text


def new_secret(random_bytes: Callable[[int], bytes]) -> str:
    """A fresh key in ``whsec_`` form: 32 random bytes (Standard Webhooks asks for 24-64)."""
    return SECRET_PREFIX + base64.b64encode(random_bytes(32)).decode()


def sign(keys: list[bytes], webhook_id: str, timestamp: datetime, body: str) -> str:
    """``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` per key, space-separated."""
    return " ".join(Webhook(key).sign(webhook_id, timestamp, body) for key in keys)


def signature_headers(
    keys: list[bytes], webhook_id: str, timestamp: datetime, body: str
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (``timestamp``: the attempt's)."""
    moment = timestamp.astimezone(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": sign(keys, webhook_id, moment, body),
    }


class SigningKeys:
    """The keys to sign with now, read from Secrets Manager and kept ``cache_s`` seconds."""

    def __init__(
        self,
        secrets_client: Any,
        secret_id: str,
        *,
        overlap: timedelta,
        cache_s: float,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = secrets_client
        self._secret_id = secret_id
        self._overlap = overlap
        self._cache_s = cache_s
        self._now = now
        self._lock = threading.Lock()
        self._keys: list[bytes] = []
        self._read_at = -float("inf")

    def current(self) -> list[bytes]:
        """AWSCURRENT's key, then AWSPREVIOUS's while the current one is within the overlap."""
        with self._lock:
            if not self._keys or time.monotonic() - self._read_at >= self._cache_s:
                self._keys = self._read()
                self._read_at = time.monotonic()
            return list(self._keys)

    def _read(self) -> list[bytes]:
        current = self._client.get_secret_value(SecretId=self._secret_id, VersionStage=CURRENT)
        keys = [decode_secret(current["SecretString"])]
        created = current.get("CreatedDate")
        if isinstance(created, datetime) and self._now() - created < self._overlap:
            try:
                previous = self._client.get_secret_value(
                    SecretId=self._secret_id, VersionStage=PREVIOUS
                )
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                    raise
            else:
                key = decode_secret(previous["SecretString"])
                if key not in keys:
                    keys.append(key)
        return keys
