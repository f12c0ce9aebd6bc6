"""The fleet-wide compile lease: one compile per key across machines, on plain object storage.

Owns the claim protocol, its expiry and renewal, and the waiting policy. It runs on any ``Leasable`` store
(store/base.py: claim objects beside the artifacts; RemoteStore provides them through store/objects.py) and
knows no backend. It needs no conditional writes, so it works on any S3-compatible server, GCS, Azure and plain
files; it needs read-after-write consistent listings, which S3 (since 2020), GCS, Azure, MinIO and local files give.

Protocol, for a key K (objects ``leases/K/<token>.lease``, body: JSON with the owner and ``expires_at``):

1. If the artifact exists, return: nothing to compile (the caller re-reads the store under the lock).
2. List the live claims of K (a claim whose ``expires_at`` has passed is dead: it is deleted and ignored).
   If another live claim exists, someone compiles: wait (jittered exponential backoff, bounded) and go to 1.
3. Write my claim (random token), then list again. If mine is the only live claim, I hold the lease;
   otherwise withdraw (delete mine), back off and go to 1.

Why "alone wins" and not "the lexicographically smallest token wins": A writes and lists (sees only A, wins);
B, with a smaller token, writes and lists later (sees A and B) and would also win. With "alone wins", if A and
B both won, A's listing preceded B's write and B's listing preceded A's write, yet each write precedes its own
listing: a cycle, so at most one wins. The price is that two simultaneous claimants may both withdraw; the
jittered backoff (and step 2, which keeps latecomers from writing at all) makes that short-lived.

The holder renews its claim every ``ttl / 3`` seconds on a daemon thread; a holder that dies (SIGKILL, lost
machine) stops renewing and its claim expires after at most ``ttl`` seconds, when a waiter takes over.
Expiry compares the holder's wall clock with the reader's, so hosts should run NTP; the worst a skewed clock
can do is a duplicate compile, because publishing is write-once: never a wrong or partial artifact.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from torchkiln import settings
from torchkiln.errors import LeaseTimeoutError, StoreError
from torchkiln.store.base import Leasable

__all__ = [
    "DEFAULT_TTL",
    "ENV_LEASE_TTL",
    "LEASE_SUFFIX",
    "Lease",
    "LeaseTimeoutError",
    "acquire_lease",
    "hold_lease",
]

log = logging.getLogger(__name__)

ENV_LEASE_TTL = settings.ENV_LEASE_TTL
#: Seconds a claim stays valid without renewal: long enough to ride out a GC pause or a slow request,
#: short enough that a dead compiler delays the fleet by about a minute (settings.py owns the value).
DEFAULT_TTL = settings.DEFAULT_LEASE_TTL
POLL_INITIAL = 0.1
#: Waiters poll at most this often apart: each poll costs a LIST (and a GET per claim) on the bucket.
POLL_MAX = 2.0
#: The name ending of a claim object (``<token>.lease``), for stores that keep claims as objects.
LEASE_SUFFIX = ".lease"


def _owner() -> str:
    rank = os.environ.get("RANK")
    local_rank = os.environ.get("LOCAL_RANK")
    ranks = "".join(f" {n}={v}" for n, v in (("rank", rank), ("local_rank", local_rank)) if v is not None)
    return f"{socket.gethostname()} pid={os.getpid()}{ranks}"


def _body(token: str, ttl: float, renewals: int) -> bytes:
    now = time.time()
    record = {"token": token, "owner": _owner(), "expires_at": now + ttl, "ttl": ttl, "renewals": renewals}
    return json.dumps(record, sort_keys=True).encode()


def _expires_at(body: bytes) -> float:
    try:
        value = json.loads(body)["expires_at"]
        return float(value)
    except (ValueError, KeyError, TypeError):
        return 0.0  # unreadable claims count as dead rather than blocking the key forever


def _live_claims(store: Leasable, key: str, *, keep: str | None = None) -> dict[str, bytes]:
    """Live claims of ``key``; dead ones (expired or unreadable) are deleted on the way."""
    now = time.time()
    live = {}
    for token, body in store.read_claims(key).items():
        if token == keep or _expires_at(body) >= now:
            live[token] = body
        else:
            log.info("lease for %s: claim %s expired, removing it", key, token)
            store.delete_claim(key, token)
    return live


class Lease:
    """A held claim. Renewed in the background until ``release()``."""

    def __init__(self, store: Leasable, key: str, token: str, ttl: float) -> None:
        self.store, self.key, self.token, self.ttl = store, key, token, ttl
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"torchkiln-lease-{key}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        renewals = 0
        while not self._stop.wait(self.ttl / 3):
            renewals += 1
            try:
                # A claim someone deleted as expired is not resurrected: that process may hold the key now.
                if not self.store.claim_exists(self.key, self.token):
                    self.lost = True
                    log.warning("lease for %s was taken over (renewal came too late)", self.key)
                    return
                if self._stop.is_set():  # released meanwhile: do not write back a claim release() deleted
                    return
                self.store.write_claim(self.key, self.token, _body(self.token, self.ttl, renewals))
            except StoreError as exc:
                # The remote is failing; the tiered store notices on its next call. Keep trying: a
                # transient error must not hand the key to a second compiler.
                log.debug("lease renewal for %s failed: %s", self.key, exc)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        try:
            self.store.delete_claim(self.key, self.token)
        except StoreError as exc:
            # Not fatal: the claim expires on its own after ttl seconds.
            log.warning("could not release the lease for %s (%s); it expires in %g s", self.key, exc, self.ttl)


def acquire_lease(store: Leasable, key: str, *, timeout: float, ttl: float = DEFAULT_TTL) -> Lease | None:
    """Hold the compile lease for ``key``, or return ``None`` once the artifact has been published.

    Raises ``LeaseTimeoutError`` when ``timeout`` seconds pass while another live claim holds the key, and
    ``StoreError`` on any remote failure (each remote call is bounded by the store's own timeout).
    """
    if ttl <= 0:
        raise StoreError(f"lease ttl must be positive, got {ttl!r}", where=ENV_LEASE_TTL)
    deadline = time.monotonic() + timeout
    delay = POLL_INITIAL
    token = f"{int(time.time() * 1000):013d}-{secrets.token_hex(8)}"
    holder = ""
    while True:
        if store.exists(key):
            return None
        live = _live_claims(store, key)
        if not live:
            store.write_claim(key, token, _body(token, ttl, 0))
            live = _live_claims(store, key, keep=token)
            if set(live) == {token}:
                if store.exists(key):  # published between step 1 and our claim
                    store.delete_claim(key, token)
                    return None
                log.debug("lease for %s acquired (%s)", key, token)
                return Lease(store, key, token, ttl)
            store.delete_claim(key, token)  # a concurrent claimant: both withdraw, the backoff breaks the tie
            live.pop(token, None)
        if live:
            holder = _describe(next(iter(live.values())))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LeaseTimeoutError(
                f"timed out after {timeout:g} s waiting for the compile lease held by {holder or 'another'}",
                where=store.claims_where(key),
                fix="raise the lock timeout; if that process is gone, its claim expires after the lease "
                f"ttl ({ttl:g} s, {ENV_LEASE_TTL}) or can be deleted by hand",
                timeout=timeout,
                holder=holder or None,
                ttl=ttl,
            )
        time.sleep(min(delay * (0.5 + random.random()), remaining))
        delay = min(delay * 2, POLL_MAX)


@contextmanager
def hold_lease(store: Leasable, key: str, timeout: float) -> Iterator[None]:
    """The lease for ``key`` with the store's own ``lease_ttl``, held for the ``with`` body.

    Returns early (holding nothing) once the artifact exists: the caller re-reads the store under it.
    """
    held = acquire_lease(store, key, timeout=timeout, ttl=store.lease_ttl)
    try:
        yield
    finally:
        if held is not None:
            held.release()


def _describe(body: bytes) -> str:
    try:
        return str(json.loads(body).get("owner", "another process"))
    except (ValueError, AttributeError):
        return "another process"
