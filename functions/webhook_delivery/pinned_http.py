"""One POST to a webhook URL, connecting only to addresses the SSRF guard approved.

A plain HTTP client would look the host up again, and a second answer (DNS rebinding) could send
the request to an address the guard never saw. Here the connection goes to one of the approved
addresses, while the Host header and, for https, the TLS server name and certificate check use the
URL's host name, exactly as a normal client would. Redirects are not followed (a 3xx is an answer
like any other non-2xx), and the whole attempt has one deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

MAX_ANSWER_BYTES: Final = 64 * 1024
"""Read at most this much of an answer: only its status and headers matter."""
USER_AGENT: Final = "imagegen-webhooks/1.0"


class DeliveryConnectionError(ConnectionError):
    """No answer: every address refused or timed out, or the answer did not come in time."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    retry_after: str | None = None


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The certificate is checked against the URL's host name, not the address.
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def post_pinned(
    url: str,
    addresses: list[str],
    headers: dict[str, str],
    body: bytes,
    *,
    timeout_s: float,
    tls_context: ssl.SSLContext | None = None,
) -> HttpAnswer:
    """POST ``body`` to ``url`` through the first of ``addresses`` that accepts a connection.

    Raises DeliveryConnectionError when none answers within ``timeout_s`` (in all).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    deadline = time.monotonic() + timeout_s
    errors: list[str] = []
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection: http.client.HTTPConnection
        if https:
            connection = _PinnedHTTPSConnection(
                host, port, address, remaining, tls_context or ssl.create_default_context()
            )
        else:
            connection = _PinnedHTTPConnection(host, port, address, remaining)
        try:
            try:
                connection.connect()
            except OSError as error:  # refused, unreachable, timed out, TLS failure
                errors.append(f"{address}: {type(error).__name__}: {error}")
                continue
            return _exchange(connection, target, headers, body, deadline)
        finally:
            connection.close()
    raise DeliveryConnectionError(
        "; ".join(errors) or f"no answer from {host} within {timeout_s:g} s"
    )


def _exchange(
    connection: http.client.HTTPConnection,
    target: str,
    headers: dict[str, str],
    body: bytes,
    deadline: float,
) -> HttpAnswer:
    try:
        connection.request(
            "POST",
            target,
            body=body,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
        )
        _shorten_timeout(connection, deadline)
        response = connection.getresponse()
    except (OSError, http.client.HTTPException) as error:
        raise DeliveryConnectionError(f"{type(error).__name__}: {error}") from error
    answer = HttpAnswer(status=response.status, retry_after=response.getheader("Retry-After"))
    # Drain a little of the body so the server is not cut off mid-write; the status is the
    # answer whatever happens to the rest.
    with contextlib.suppress(OSError, http.client.HTTPException):
        _shorten_timeout(connection, deadline)
        response.read(MAX_ANSWER_BYTES)
    return answer


def _shorten_timeout(connection: http.client.HTTPConnection, deadline: float) -> None:
    """Each socket operation waits at most until the attempt's deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no answer before the deadline")
    if connection.sock is not None:
        connection.sock.settimeout(remaining)
