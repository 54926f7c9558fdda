"""The ingress's limits on failed authentication and its cache of unknown keys, on a clock
that only moves when a test moves it."""

from datetime import UTC, datetime

from services.ingress import core
from services.ingress.auth_guard import (
    FailureLimits,
    Limited,
    TokenBuckets,
    UnknownKeys,
    address_of,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(
    clock: Clock, *, per_minute: float = 60, burst: int = 3, key_burst: int = 100, entries: int = 10
) -> FailureLimits:
    return FailureLimits(
        TokenBuckets(per_minute, burst, entries, clock),
        TokenBuckets(per_minute, key_burst, entries, clock),
    )


def test_an_address_may_fail_its_burst_then_waits_for_its_budget_to_refill() -> None:
    clock = Clock()
    guard = limits(clock, per_minute=30, burst=3)

    admitted = [guard.admit("203.0.113.7", f"key{i}") for i in range(3)]
    refused = guard.admit("203.0.113.7", "key3")

    assert admitted == [None, None, None]
    assert refused == Limited(by="address", retry_after=2, per_minute=30, burst=3)
    clock.now += 1.9
    assert guard.admit("203.0.113.7", "key3") is not None
    clock.now += 0.1
    assert guard.admit("203.0.113.7", "key3") is None


def test_a_refused_request_spends_nothing_so_a_client_that_waits_gets_through() -> None:
    clock = Clock()
    guard = limits(clock, per_minute=60, burst=1)
    assert guard.admit("198.51.100.1", "k") is None

    for _ in range(1000):  # hammering while limited does not push the wait further
        assert guard.admit("198.51.100.1", "k") is not None
    clock.now += 1.0

    assert guard.admit("198.51.100.1", "k") is None


def test_one_address_over_its_limit_leaves_other_addresses_alone() -> None:
    clock = Clock()
    guard = limits(clock, burst=2)
    for i in range(2):
        guard.admit("203.0.113.7", f"key{i}")

    assert guard.admit("203.0.113.7", "other") is not None
    assert guard.admit("203.0.113.8", "other") is None


def test_one_key_failing_from_many_addresses_is_limited_by_key() -> None:
    clock = Clock()
    guard = limits(clock, burst=100, key_burst=2)
    guard.admit("203.0.113.1", "revoked")
    guard.admit("203.0.113.2", "revoked")

    refused = guard.admit("203.0.113.3", "revoked")

    assert refused is not None
    assert refused.by == "key"
    assert guard.admit("203.0.113.3", "another") is None


def test_a_key_that_turns_out_to_exist_gives_its_tokens_back() -> None:
    clock = Clock()
    guard = limits(clock, burst=1)
    assert guard.admit("203.0.113.7", "fresh") is None

    guard.refund("203.0.113.7", "fresh")

    assert guard.admit("203.0.113.7", "next") is None
    assert len(guard.by_address) == 1  # the refunded bucket was full again: forgotten


def test_the_buckets_keep_a_bounded_number_of_names_forgetting_the_least_recent() -> None:
    clock = Clock()
    buckets = TokenBuckets(60, 1, 100, clock)

    for i in range(10_000):
        buckets.spend(f"2001:db8:{i:x}::/64")

    assert len(buckets) == 100
    assert buckets.wait("2001:db8:270f::/64") > 0  # the newest is still limited
    assert buckets.wait("2001:db8:0::/64") == 0  # the oldest was forgotten


def test_a_rate_of_zero_disables_the_limit() -> None:
    clock = Clock()
    guard = limits(clock, per_minute=0, burst=0, key_burst=0)

    assert all(guard.admit("203.0.113.7", "k") is None for _ in range(1000))
    assert len(guard.by_address) == 0


def test_an_ipv6_client_is_counted_by_its_64_and_a_mapped_ipv4_one_by_its_address() -> None:
    assert address_of("2001:db8:1:2:aaaa::1") == address_of("2001:db8:1:2:bbbb::9")
    assert address_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_of("2001:db8:1:3::1") != address_of("2001:db8:1:2::1")
    assert address_of("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_of("203.0.113.7") == "203.0.113.7"
    assert address_of(None) == "unknown"
    assert address_of("testclient") == "testclient"


def test_an_unknown_key_is_remembered_for_its_ttl() -> None:
    clock = Clock()
    unknown = UnknownKeys(ttl=60, max_entries=10, clock=clock)

    unknown.add("digest")
    clock.now += 59.9
    remembered = "digest" in unknown
    clock.now += 0.1

    assert remembered
    assert "digest" not in unknown
    assert len(unknown) == 0


def test_an_unknown_key_that_appears_is_forgotten_at_once() -> None:
    unknown = UnknownKeys(ttl=60, max_entries=10, clock=Clock())
    unknown.add("digest")

    unknown.discard("digest")

    assert "digest" not in unknown


def test_the_unknown_keys_are_bounded_dropping_the_oldest_and_the_expired() -> None:
    clock = Clock()
    unknown = UnknownKeys(ttl=60, max_entries=100, clock=clock)
    for i in range(1000):
        unknown.add(f"d{i}")
    assert len(unknown) == 100
    assert "d999" in unknown
    assert "d899" not in unknown

    clock.now += 61
    unknown.add("new")

    assert len(unknown) == 1


def test_a_ttl_of_zero_remembers_nothing() -> None:
    unknown = UnknownKeys(ttl=0, max_entries=100, clock=Clock())

    unknown.add("digest")

    assert "digest" not in unknown


def test_the_429_says_which_limit_and_when_to_retry_in_its_header_and_its_detail() -> None:
    limited = Limited(by="address", retry_after=12, per_minute=60, burst=30)

    error = core.too_many_failures(limited, datetime(2026, 12, 2, 9, 30, 0, 500, tzinfo=UTC))

    assert (error.status, error.code) == (429, "too_many_failed_authentications")
    assert error.headers == {"Retry-After": "12"}
    assert "from this address" in error.detail
    assert "at most 30 at once, then 60 a minute" in error.detail
    assert "retry after 12 s, at 2026-12-02T09:30:12Z" in error.detail
