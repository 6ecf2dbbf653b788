"""Rate limits on the reference hub's patient-facing pages: token buckets per
client address on the hub's clock, and a stricter bucket for wrong guesses."""

from __future__ import annotations

import re

import pytest

from medix.hub.throttle import Rate, RateLimits, Throttle, TokenBuckets, client_key, retry_after
from tests.fakes import FakeClock
from tests.medix.conftest import HubClient
from tests.medix.nodekit import BIRTH_DATE, MEDIS_CODE, make_study

pytestmark = pytest.mark.attack  # guessing codes, links and passwords

ATTACKER = "203.0.113.5"
NEIGHBOUR = "203.0.113.6"


def wrong_code(n: int) -> str:
    return f"WRONG{n:07d}"


# -- the bucket ------------------------------------------------------------------------------


def test_bucket_takes_refills_and_says_how_long_to_wait() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(Rate(burst=3, per_s=0.5), clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(2.0)
    assert buckets.take("b") == 0.0  # keys are independent
    clock.advance(1.0)
    assert buckets.take("a") == pytest.approx(1.0)  # half a token: not yet
    clock.advance(1.0)
    assert buckets.take("a") == 0.0
    clock.advance(3600)
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # never more than the burst
    assert buckets.take("a", cost=10) == pytest.approx(20.0)


def test_charge_runs_into_debt_at_most_one_burst() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(Rate(burst=2, per_s=1.0), clock)
    for _ in range(100):
        buckets.charge("a")
    assert buckets.wait("a") == pytest.approx(3.0)  # from -2 back to 1


def test_a_clock_stepped_back_neither_drains_nor_fills() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(Rate(burst=2, per_s=1.0), clock)
    buckets.take("a")
    buckets.take("a")
    clock.advance(-3600)
    assert buckets.wait("a") > 0
    clock.advance(3600 + 1)
    assert buckets.wait("a") == 0.0


def test_memory_is_bounded_and_the_longest_unused_is_forgotten() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(Rate(burst=1, per_s=0.001), clock, max_keys=100)
    buckets.take("keep")
    for n in range(10_000):
        buckets.take(f"k{n}")
        if n % 50 == 0:
            assert buckets.take("keep") > 0  # used recently: remembered, still empty
    assert len(buckets) == 100


def test_rates_must_make_sense() -> None:
    for burst, per_s in ((0, 1.0), (1, 0.0), (5, -1.0)):
        with pytest.raises(ValueError):
            Rate(burst=burst, per_s=per_s)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # same subscriber, same bucket
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("fe80::1%eth0", "fe80::/64"),
        (None, "unknown"),
        ("", "unknown"),
        ("not an address" * 20, ("not an address" * 20)[:64]),
    ],
)
def test_client_key(address: str | None, key: str) -> None:
    assert client_key(address) == key


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after(0.01) == "1" and retry_after(1.2) == "2" and retry_after(360) == "360"


def test_a_day_of_guessing_from_one_address_gets_the_burst_and_the_refill() -> None:
    """Brute force is infeasible: an address gets about 250 wrong codes a day at most, and a
    Medis code has 31^11 (about 2.5e16) values."""
    clock = FakeClock()
    throttle = Throttle(RateLimits(), clock)
    guesses = throttle.limits.guesses
    tried = 0
    for _ in range(24 * 3600 // 10):  # a try every ten seconds
        if throttle.may_guess(ATTACKER) == 0:
            throttle.wrong_guess(ATTACKER)
            tried += 1
        clock.advance(10)
    assert tried <= guesses.burst + 24 * 3600 * guesses.per_s + 1
    assert tried <= 251


# -- the pages -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/patient", "/physician/sign-in", "/inbox", "/"])
def test_pages_are_rate_limited_per_address(hc: HubClient, path: str) -> None:
    burst = int(hc.hub.config.rate_limits.requests.burst)
    attacker = {"REMOTE_ADDR": ATTACKER}
    for _ in range(burst):
        assert hc.client.get(path, environ_base=attacker).status_code in (200, 303)
    limited = hc.client.get(path, environ_base=attacker)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert limited.mimetype == "text/html" and "Too many requests" in limited.get_data(True)
    # The whole patient-facing side shares the bucket, downloads and files included.
    assert hc.client.get("/download/x.1.y", environ_base=attacker).status_code == 429
    assert hc.client.get("/files/abc/x.zip", environ_base=attacker).status_code == 429
    # Another address is not affected; the node API and admin are not limited here.
    assert hc.client.get(path, environ_base={"REMOTE_ADDR": NEIGHBOUR}).status_code in (200, 303)
    assert hc.admin_get("/nodes", environ_base=attacker).status_code == 200
    hc.clock.advance(1)
    assert hc.client.get(path, environ_base=attacker).status_code in (200, 303)


def test_wrong_codes_from_one_address_are_limited(hc: HubClient) -> None:
    # Even with a lax policy (the persistent per-day lock out of the way), the hub's own
    # bucket stops a guesser.
    hc.admin_post("/policy", json={"version": 1, "code_max_attempts": 1000})
    hc.upload(make_study())
    burst = int(hc.hub.config.rate_limits.guesses.burst)
    attacker = {"REMOTE_ADDR": ATTACKER}
    for n in range(burst):
        response = hc.client.post(
            "/patient",
            data={"code": wrong_code(n), "birth_date": BIRTH_DATE},
            environ_base=attacker,
        )
        assert response.status_code == 403
    # The N+1st try is refused before the code is looked at: even the right code.
    locked = hc.client.post(
        "/patient", data={"code": MEDIS_CODE, "birth_date": BIRTH_DATE}, environ_base=attacker
    )
    assert locked.status_code == 429
    wait = int(locked.headers["Retry-After"])
    assert wait > 60
    page = locked.get_data(as_text=True)
    assert "CHEST PA" not in page and "/download/" not in page and "<form" not in page
    # Another address is unaffected.
    neighbour = hc.client.post(
        "/patient",
        data={"code": MEDIS_CODE, "birth_date": BIRTH_DATE},
        environ_base={"REMOTE_ADDR": NEIGHBOUR},
    )
    assert neighbour.status_code == 200 and "CHEST PA" in neighbour.get_data(as_text=True)
    # After the wait one more try is allowed, and a right one works.
    hc.clock.advance(wait)
    again = hc.client.post(
        "/patient", data={"code": MEDIS_CODE, "birth_date": BIRTH_DATE}, environ_base=attacker
    )
    assert again.status_code == 200


def test_wrong_birth_dates_count_as_wrong_guesses(hc: HubClient) -> None:
    hc.admin_post("/policy", json={"version": 1, "code_max_attempts": 1000})
    hc.upload(make_study())
    burst = int(hc.hub.config.rate_limits.guesses.burst)
    attacker = {"REMOTE_ADDR": "2001:db8:5::1"}
    for day in range(1, burst + 1):
        response = hc.client.post(
            "/patient",
            data={"code": MEDIS_CODE, "birth_date": f"1980-01-{day:02d}"},
            environ_base=attacker,
        )
        assert response.status_code == 403
    # Another address in the same IPv6 /64 is the same client.
    same_net = {"REMOTE_ADDR": "2001:db8:5::ffff"}
    locked = hc.client.post(
        "/patient", data={"code": MEDIS_CODE, "birth_date": BIRTH_DATE}, environ_base=same_net
    )
    assert locked.status_code == 429


def test_malformed_patient_posts_are_not_guesses(hc: HubClient) -> None:
    hc.upload(make_study())
    attacker = {"REMOTE_ADDR": ATTACKER}
    for _ in range(20):
        for data in (
            {},
            {"code": ""},
            {"birth_date": BIRTH_DATE},
            {"code": "-- --", "birth_date": "x"},
        ):
            assert hc.client.post("/patient", data=data, environ_base=attacker).status_code == 400
        hc.clock.advance(4)  # the request bucket, not the guesses, is what refills here
    ok = hc.client.post(
        "/patient", data={"code": MEDIS_CODE, "birth_date": BIRTH_DATE}, environ_base=attacker
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "code",
    [
        "\u0000" * 5000,
        "\u0661\u0662" * 10,
        "K7QM\u200b2XHP9RTC",
        "'; DROP TABLE uploads; --",
        "x" * 100_000,
    ],
)
def test_junk_codes_are_wrong_guesses_never_errors(hc: HubClient, code: str) -> None:
    hc.upload(make_study())
    statuses = {
        hc.client.post(
            "/patient",
            data={"code": code, "birth_date": "\u0661"},
            environ_base={"REMOTE_ADDR": ATTACKER},
        ).status_code
        for _ in range(15)
    }
    assert statuses <= {403, 429} and 429 in statuses
    assert (
        hc.client.post("/patient", data={"code": MEDIS_CODE, "birth_date": BIRTH_DATE}).status_code
        == 200
    )


def test_forged_download_links_and_file_ids_count_as_wrong_guesses(hc: HubClient) -> None:
    hc.upload(make_study())
    page = hc.client.post(
        "/patient",
        data={"code": MEDIS_CODE, "birth_date": BIRTH_DATE},
        environ_base={"REMOTE_ADDR": NEIGHBOUR},
    ).get_data(as_text=True)
    link = re.search(r'href="(/download/[^"]+)"', page)
    assert link
    burst = int(hc.hub.config.rate_limits.guesses.burst)
    attacker = {"REMOTE_ADDR": ATTACKER}
    for n in range(burst):
        forged = f"/download/{MEDIS_CODE}.9999999999.{n:032x}" if n % 2 else f"/files/f{n}/a.zip"
        assert hc.client.get(forged, environ_base=attacker).status_code == 404
    # Locked: even a valid link is refused to this address, and not to the neighbour.
    assert hc.client.get(link.group(1), environ_base=attacker).status_code == 429
    valid = hc.client.get(link.group(1), environ_base={"REMOTE_ADDR": NEIGHBOUR})
    assert valid.status_code == 200
    valid.close()
    # Expired links are no guess: a patient coming back late is not locked out.
    hc.clock.advance(3 * 3600)
    for _ in range(burst + 1):
        assert (
            hc.client.get(link.group(1), environ_base={"REMOTE_ADDR": "192.0.2.200"}).status_code
            == 410
        )
