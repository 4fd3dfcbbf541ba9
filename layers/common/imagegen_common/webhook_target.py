"""The SSRF guard for webhook URLs: may this service POST to that URL?

A webhook URL is chosen by the caller, and the delivery runs inside our network: without a guard a
caller could make us POST to the instance metadata service, to a VPC-internal address or to our
own loopback. The API checks a job's URL at submit (a 422 naming ``webhook.url``) and the delivery
function checks it again before every attempt, because DNS may have changed in between; the
delivery then connects to exactly the addresses this check approved, so a second lookup cannot
hand it another one (DNS rebinding).

Rules, each a ``rule`` of :class:`UnsafeWebhookTargetError`:

- ``invalid_url``: not an absolute http(s) URL with a host;
- ``credentials_not_allowed``: a user or password in the URL (they would end up in logs);
- ``https_required``: plain http, except to a loopback host when loopback is allowed;
- ``unresolvable``: the host has no address;
- per address, every address the host resolves to: ``metadata_address`` (cloud instance
  metadata and similar endpoints), ``unspecified_address``, ``loopback_address`` (unless
  allowed), ``link_local_address``, ``multicast_address``, ``private_address`` (RFC 1918, unique
  local, shared address space ...), ``reserved_address`` and ``non_public_address`` (anything
  else that is not globally routable). An IPv6 address that embeds an IPv4 one (IPv4-mapped,
  NAT64, 6to4, Teredo) is judged by the IPv4 address too.

Loopback is allowed only behind an explicit flag that only the local stack sets.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], list[str]]

METADATA_ADDRESSES: Final[frozenset[IpAddress]] = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack instance metadata
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.169.253",  # AWS VPC DNS
        "169.254.169.123",  # AWS time sync
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "fd00:ec2::253",  # AWS VPC DNS over IPv6
        "fd00:ec2::23",  # AWS DNS over IPv6 (Nitro)
        "100.100.100.200",  # Alibaba Cloud metadata
        "192.0.0.192",  # Oracle Cloud metadata
        "168.63.129.16",  # Azure wire server (a public address, so named here)
    )
)
"""Endpoints that hand out credentials or control a host. Most are link-local or private and
would be refused anyway; naming them gives the clearer rule, and catches the public ones."""

_NAT64_PREFIX: Final = ipaddress.ip_network("64:ff9b::/96")


class UnsafeWebhookTargetError(ValueError):
    """A webhook URL this service must not POST to; ``rule`` says which rule refused it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to (TCP), in the resolver's order, without repeats."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 zone id
        if address not in addresses:
            addresses.append(address)
    return addresses


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def address_rule(address: IpAddress, *, allow_loopback: bool) -> str | None:
    """The rule that refuses ``address`` as a webhook target, or None if it may be used."""
    if address in METADATA_ADDRESSES:
        return "metadata_address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            rule = address_rule(embedded, allow_loopback=allow_loopback)
            if rule is not None:
                return rule
            if address.ipv4_mapped is not None:
                return None  # the same host as the public IPv4 address it maps
    if address.is_unspecified:
        return "unspecified_address"
    if address.is_loopback:
        return None if allow_loopback else "loopback_address"
    if address.is_link_local:
        return "link_local_address"
    if address.is_multicast:
        return "multicast_address"
    if address.is_private:
        return "private_address"
    if address.is_reserved:
        return "reserved_address"
    if not address.is_global:
        # e.g. 100.64.0.0/10, the shared address space of carrier-grade NAT.
        return "non_public_address"
    return None


def _is_loopback(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_webhook_target(
    url: str, *, allow_loopback: bool, resolve: Resolver | None = None
) -> list[str]:
    """The addresses a delivery to ``url`` may connect to; raises UnsafeWebhookTargetError.

    Every address the host resolves to must pass, not just the first: a client (or an attacker's
    DNS) could otherwise be handed the one that does not. ``resolve`` replaces the DNS lookup
    (tests inject one and never use DNS); an IP literal is not looked up.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as error:
        raise UnsafeWebhookTargetError("invalid_url", f"not a valid URL: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise UnsafeWebhookTargetError("invalid_url", "must be an absolute http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookTargetError(
            "credentials_not_allowed", "must not carry a user name or password"
        )
    if scheme == "http" and not allow_loopback:
        raise UnsafeWebhookTargetError("https_required", "must use https")

    try:
        addresses: list[IpAddress] = [ipaddress.ip_address(host.split("%", 1)[0])]
    except ValueError:
        resolved = (resolve or resolve_host)(host)
        addresses = []
        for text in resolved:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise UnsafeWebhookTargetError("unresolvable", f"host {host!r} has no address")

    for address in addresses:
        rule = address_rule(address, allow_loopback=allow_loopback)
        if rule is not None:
            raise UnsafeWebhookTargetError(
                rule,
                f"host {host!r} resolves to {address}, a {rule.replace('_', ' ')}; "
                "webhooks go to public addresses only",
            )
    if scheme == "http" and not all(_is_loopback(address) for address in addresses):
        raise UnsafeWebhookTargetError(
            "https_required", "must use https (http only to a loopback host, locally)"
        )
    return [str(address) for address in addresses]
