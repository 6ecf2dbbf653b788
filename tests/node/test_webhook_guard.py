"""The webhook target check, with the resolver seam standing in for DNS."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from afra.config import DownloadSettings
from afra.node.webhook import WebhookGuard, WebhookRefused

pytestmark = pytest.mark.attack  # webhook targets pointing inward (SSRF)


def guard(
    answers: dict[str, list[str]], calls: list[str] | None = None, **settings: object
) -> WebhookGuard:
    def resolve(host: str, port: int) -> Iterable[str]:
        if calls is not None:
            calls.append(host)
        return answers[host]

    return WebhookGuard(
        DownloadSettings.model_validate(settings),
        hub_url=lambda: "https://hub.example:8443",
        policy_hosts=lambda: ("hooks.example",),
        resolver=resolve,
    )


@pytest.mark.parametrize(
    ("answers", "why"),
    [
        (["10.0.0.5"], "private"),
        (["93.184.216.34", "192.168.1.9"], "private"),  # one bad answer is enough
        (["::ffff:169.254.169.254"], "link-local"),
        (["2002:a9fe:a9fe::1"], "link-local (cloud metadata lives here) (inside IPv6)"),
        (["64:ff9b::7f00:1"], "loopback (inside IPv6)"),
        (["fec0::1"], "site-local"),
        (["fe80::1%eth0"], "link-local"),
        (["::1"], "loopback"),
    ],
)
def test_a_name_resolving_inward_is_refused(answers: list[str], why: str) -> None:
    with pytest.raises(WebhookRefused, match="resolves to") as refused:
        guard({"hooks.example": answers}).check("https://hooks.example/progress")
    assert why in str(refused.value)


def test_a_public_answer_is_pinned_and_the_name_resolved_once() -> None:
    calls: list[str] = []
    target = guard({"HOOKS.example": [], "hooks.example": ["93.184.216.34"]}, calls).check(
        "https://HOOKS.example./progress?job=1"
    )
    assert (target.host, target.address, target.port, target.path) == (
        "hooks.example",
        "93.184.216.34",
        443,
        "/progress?job=1",
    )
    assert calls == ["hooks.example"]


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("https://hooks.example:22/x", "port 22"),
        ("https://hub.example:9999/x", "port 9999"),
        ("https://evil.example/x", "not the enrolled hub's"),
        ("https://2130706433/x", "not the enrolled hub's"),  # 127.0.0.1 as a number
        ("ftp://hooks.example/x", "must use https"),
        ("https://a:b@hooks.example/x", "credentials"),
    ],
)
def test_ports_hosts_and_schemes_outside_the_rules_are_refused(uri: str, why: str) -> None:
    with pytest.raises(WebhookRefused, match=why):
        guard({"hooks.example": ["93.184.216.34"]}).check(uri)


def test_the_hubs_own_port_and_explicitly_allowed_addresses_pass() -> None:
    target = guard({"hub.example": ["10.1.2.3"]}, allow_addresses=["10.1.2.0/24"]).check(
        "https://hub.example:8443/webhook/v1/pacs/afra"
    )
    assert (target.address, target.port) == ("10.1.2.3", 8443)
