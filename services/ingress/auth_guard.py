"""What a key the ingress does not know may cost, decided without NATS: token buckets limiting
failed authentications per source address and per key, and a cache of keys known not to exist.

A valid key never meets either: it is found in the directory (a dictionary lookup) before
anything here is asked. Only a key the directory misses could cost a round trip (catching the
key mirror up with the registry's writes), and that is what these bound. Time is injected
(`Clock`, seconds, monotonic); every table keeps at most a fixed number of entries.
"""

import functools
import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Clock = Callable[[], float]
"""Seconds from an arbitrary origin that never goes back (`time.monotonic`)."""

IPV6_PREFIX = 64
"""An IPv6 client is limited by its /64: one host commonly holds the whole network."""


def address_of(host: str | None) -> str:
    """The name a client's failures are counted under: its IPv4 address (an IPv4-mapped IPv6
    one included), or its IPv6 /64 network; anything else as it is."""
    if not host:
        return "unknown"
    if ":" not in host:  # an IPv4 address as the server wrote it (or a test's name)
        return host
    return _ipv6_name(host)


@functools.lru_cache(maxsize=4096)
def _ipv6_name(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


class TokenBuckets:
    """One token bucket per name: `burst` tokens at most, refilled at `per_minute` a minute.

    A name absent from the table has a full bucket, so the table holds only names that spent
    something lately; past `max_entries` the least recently used name is forgotten (it starts
    over with a full bucket: memory stays bounded whatever an attacker sends).
    """

    def __init__(self, per_minute: float, burst: int, max_entries: int, clock: Clock) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_entries = max_entries
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """name -> (tokens, when they were counted)."""

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.burst > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def tokens(self, name: str) -> float:
        found = self._buckets.get(name)
        if found is None:
            return self.burst
        tokens, at = found
        return min(self.burst, tokens + (self._clock() - at) * self.rate)

    def wait(self, name: str) -> float:
        """Seconds until `name` has a token to spend (0: it has one now)."""
        if not self.enabled:
            return 0.0
        missing = 1.0 - self.tokens(name)
        return 0.0 if missing <= 0 else missing / self.rate

    def spend(self, name: str) -> None:
        if not self.enabled:
            return
        self._set(name, self.tokens(name) - 1.0)

    def refund(self, name: str) -> None:
        if not self.enabled or name not in self._buckets:
            return
        tokens = self.tokens(name) + 1.0
        if tokens >= self.burst:
            del self._buckets[name]  # full: the same as absent
        else:
            self._set(name, tokens)

    def _set(self, name: str, tokens: float) -> None:
        self._buckets[name] = (tokens, self._clock())
        self._buckets.move_to_end(name)
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)


@dataclass(frozen=True)
class Limited:
    """A request refused before any lookup: which limit, and when to try again."""

    by: Literal["address", "key"]
    retry_after: int
    """Whole seconds (at least 1), for `Retry-After`."""
    per_minute: float
    burst: int


class FailureLimits:
    """Failed authentications allowed per source address and per key (its digest).

    `admit` is asked before a key the directory misses is looked up any further, and spends a
    token of both buckets then, so requests in flight at the same moment cannot overspend;
    `refund` gives them back when the key turns out to exist (created a moment ago).
    """

    def __init__(self, by_address: TokenBuckets, by_key: TokenBuckets) -> None:
        self.by_address = by_address
        self.by_key = by_key

    def admit(self, address: str, key: str) -> Limited | None:
        """None, having spent a token of both buckets; or the limit `address` or `key` is
        over (nothing spent)."""
        wait = self.by_address.wait(address)
        if wait > 0:
            return _limited("address", self.by_address, wait)
        wait = self.by_key.wait(key)
        if wait > 0:
            return _limited("key", self.by_key, wait)
        self.by_address.spend(address)
        self.by_key.spend(key)
        return None

    def refund(self, address: str, key: str) -> None:
        self.by_address.refund(address)
        self.by_key.refund(key)


def _limited(by: Literal["address", "key"], buckets: TokenBuckets, wait: float) -> Limited:
    return Limited(
        by=by,
        retry_after=max(1, math.ceil(wait)),
        per_minute=buckets.rate * 60,
        burst=int(buckets.burst),
    )


class UnknownKeys:
    """Digests of keys found not to exist after the key mirror caught up, each for `ttl`
    seconds, at most `max_entries` of them (the oldest forgotten first).

    The directory discards a digest the moment its key appears in the mirror, and is asked
    first anyway: a key created after it was cached works at once.
    """

    def __init__(self, ttl: float, max_entries: int, clock: Clock) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()
        """digest -> when it expires; insertion order is expiry order (one `ttl` for all)."""

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, digest: str) -> bool:
        until = self._until.get(digest)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[digest]
            return False
        return True

    def add(self, digest: str) -> None:
        if self.ttl <= 0 or self.max_entries <= 0:
            return
        now = self._clock()
        self._until.pop(digest, None)
        self._until[digest] = now + self.ttl
        while self._until:
            oldest, until = next(iter(self._until.items()))
            if until > now and len(self._until) <= self.max_entries:
                break
            del self._until[oldest]

    def discard(self, digest: str) -> None:
        self._until.pop(digest, None)
