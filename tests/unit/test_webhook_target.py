"""The SSRF guard for webhook URLs, with an injected resolver (these tests never use DNS)."""

from __future__ import annotations

import ipaddress

import pytest

from imagegen_common.webhook_target import UnsafeWebhookTargetError, check_webhook_target


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    asked: list[str] = []

    def resolve(host: str) -> list[str]:
        asked.append(host)
        return table.get(host, [])

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


PUBLIC = resolver(
    {"hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]}
)


def refused(
    url: str, *, allow_loopback: bool = False, table: dict[str, list[str]] | None = None
) -> str:
    with pytest.raises(UnsafeWebhookTargetError) as caught:
        check_webhook_target(url, allow_loopback=allow_loopback, resolve=resolver(table or {}))
    assert isinstance(caught.value, ValueError)
    return caught.value.rule


def test_a_public_https_host_is_allowed_and_every_address_returned() -> None:
    addresses = check_webhook_target(
        "https://hooks.example.com/imagegen?x=1", allow_loopback=False, resolve=PUBLIC
    )
    assert addresses == ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]


def test_an_ip_literal_is_not_looked_up() -> None:
    resolve = resolver({})
    assert check_webhook_target(
        "https://93.184.215.14:8443/h", allow_loopback=False, resolve=resolve
    ) == ["93.184.215.14"]
    assert resolve.asked == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://hooks.example.com/", "https_required"),
        ("ftp://hooks.example.com/", "invalid_url"),
        ("https:///nohost", "invalid_url"),
        ("hooks.example.com/path", "invalid_url"),
        ("https://hooks.example.com:99999/", "invalid_url"),
        ("https://user:pw@hooks.example.com/", "credentials_not_allowed"),
        ("https://nowhere.example/", "unresolvable"),
    ],
)
def test_url_rules(url: str, rule: str) -> None:
    assert refused(url, table={"hooks.example.com": ["93.184.215.14"]}) == rule


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("169.254.169.254", "metadata_address"),
        ("169.254.170.2", "metadata_address"),
        ("fd00:ec2::254", "metadata_address"),
        ("100.100.100.200", "metadata_address"),
        ("168.63.129.16", "metadata_address"),
        ("::ffff:169.254.169.254", "metadata_address"),
        ("127.0.0.1", "loopback_address"),
        ("127.8.9.10", "loopback_address"),
        ("::1", "loopback_address"),
        ("::ffff:127.0.0.1", "loopback_address"),
        ("64:ff9b::7f00:1", "loopback_address"),
        ("2002:7f00:1::", "loopback_address"),
        ("0.0.0.0", "unspecified_address"),
        ("::", "unspecified_address"),
        ("169.254.1.1", "link_local_address"),
        ("fe80::1", "link_local_address"),
        ("224.0.0.1", "multicast_address"),
        ("ff02::1", "multicast_address"),
        ("10.0.0.1", "private_address"),
        ("172.16.5.4", "private_address"),
        ("192.168.1.1", "private_address"),
        ("fc00::1", "private_address"),
        ("::ffff:10.0.0.1", "private_address"),
        ("240.0.0.1", "private_address"),
        ("100.64.0.1", "non_public_address"),
        ("::7f00:1", "reserved_address"),
    ],
)
def test_a_host_resolving_to_a_refused_address(address: str, rule: str) -> None:
    assert refused("https://evil.example/", table={"evil.example": [address]}) == rule


def test_one_bad_address_among_good_ones_refuses_the_host() -> None:
    table = {"rebind.example": ["93.184.215.14", "10.1.2.3"]}
    assert refused("https://rebind.example/", table=table) == "private_address"


def test_an_ip_literal_in_brackets_is_judged() -> None:
    assert refused("https://[::1]:8443/") == "loopback_address"
    assert refused("https://[::ffff:a9fe:a9fe]/") == "metadata_address"


def test_a_public_ipv4_mapped_address_is_allowed() -> None:
    table = {"mapped.example": ["::ffff:93.184.215.14"]}
    assert check_webhook_target(
        "https://mapped.example/", allow_loopback=False, resolve=resolver(table)
    ) == [str(ipaddress.ip_address("::ffff:93.184.215.14"))]


def test_loopback_flag_allows_http_to_loopback_only() -> None:
    table = {"localhost": ["127.0.0.1", "::1"], "hooks.example.com": ["93.184.215.14"]}
    resolve = resolver(table)
    assert check_webhook_target(
        "http://localhost:8080/h", allow_loopback=True, resolve=resolve
    ) == [
        "127.0.0.1",
        "::1",
    ]
    assert check_webhook_target("http://127.0.0.1:9/h", allow_loopback=True, resolve=resolve) == [
        "127.0.0.1"
    ]
    assert check_webhook_target("https://[::1]/h", allow_loopback=True, resolve=resolve) == ["::1"]
    # http to a public host stays refused, and so does every other private class.
    assert (
        refused("http://hooks.example.com/", allow_loopback=True, table=table) == "https_required"
    )
    assert refused("http://10.0.0.1/", allow_loopback=True) == "private_address"
    assert refused("http://169.254.169.254/", allow_loopback=True) == "metadata_address"
    assert (
        refused(
            "http://mixed.example/",
            allow_loopback=True,
            table={"mixed.example": ["127.0.0.1", "93.184.215.14"]},
        )
        == "https_required"
    )


def test_loopback_is_refused_without_the_flag() -> None:
    assert refused("https://localhost/", table={"localhost": ["127.0.0.1"]}) == "loopback_address"
    assert refused("http://localhost/", table={"localhost": ["127.0.0.1"]}) == "https_required"


def test_a_resolver_answer_that_is_not_an_address_is_ignored() -> None:
    assert refused("https://odd.example/", table={"odd.example": ["not-an-ip"]}) == "unresolvable"
