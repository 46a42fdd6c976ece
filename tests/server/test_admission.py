"""Admission of connections and streams, and the refusal log throttle (sans-I/O)."""

from __future__ import annotations

from shelf_stream.server.admission import Admission, AdmissionLimits, Admitted, Refused
from shelf_stream.server.limits import LogThrottle


def admission(
    streams: int = 4, per_address: int = 2, pending: int = 4, pending_per_address: int = 2
) -> Admission:
    return Admission(
        AdmissionLimits(
            max_streams=streams,
            max_streams_per_address=per_address,
            max_pending=pending,
            max_pending_per_address=pending_per_address,
        )
    )


def test_pending_connections_never_hold_stream_slots() -> None:
    gate = admission(streams=1, pending=4, pending_per_address=4)
    for connection in range(4):
        assert gate.on_connect(connection, "10.0.0.1") == Admitted()
    assert gate.streams() == 0 and gate.pending() == 4
    assert gate.on_hello(3) == Admitted()
    assert gate.streams() == 1 and gate.pending() == 3


def test_an_address_may_hold_only_a_few_pending_connections() -> None:
    gate = admission(pending=8, pending_per_address=2)
    assert gate.on_connect(1, "10.0.0.1") == Admitted()
    assert gate.on_connect(2, "10.0.0.1") == Admitted()
    refused = gate.on_connect(3, "10.0.0.1")
    assert isinstance(refused, Refused) and refused.label == "pending_full"
    assert "at most 2 connections per client address" in refused.reason
    assert gate.on_connect(4, "10.0.0.2") == Admitted()


def test_a_fresh_address_evicts_the_oldest_of_the_most_crowded_one() -> None:
    gate = admission(pending=4, pending_per_address=3)
    for connection, address in [(1, "a"), (2, "b"), (3, "a"), (4, "a")]:
        assert gate.on_connect(connection, address) == Admitted()
    assert gate.on_connect(5, "fresh") == Admitted(evicted=(1,))
    assert not gate.is_pending(1) and gate.pending("a") == 2
    assert gate.evictions == 1
    # The evicted connection's Hello, if it raced in, finds no slot.
    late = gate.on_hello(1)
    assert isinstance(late, Refused) and late.label == "evicted"


def test_the_crowd_cannot_evict_a_less_crowded_address() -> None:
    gate = admission(pending=3, pending_per_address=3)
    for connection, address in [(1, "fresh"), (2, "a"), (3, "a")]:
        gate.on_connect(connection, address)
    # "a" has 2 pending and "b" none: b evicts a's oldest, never fresh's only one.
    assert gate.on_connect(4, "b") == Admitted(evicted=(2,))
    refused = gate.on_connect(5, "b")  # every address holds one now: b is as crowded
    assert isinstance(refused, Refused) and refused.label == "pending_full"
    assert gate.is_pending(1) and gate.is_pending(3) and gate.is_pending(4)


def test_a_full_server_refuses_before_the_hello() -> None:
    gate = admission(streams=1, per_address=1)
    gate.on_connect(1, "a")
    gate.on_hello(1)
    refused = gate.on_connect(2, "b")
    assert isinstance(refused, Refused) and refused.label == "busy"
    assert "limit of 1 streams" in refused.reason
    assert gate.pending() == 0


def test_stream_slots_are_checked_again_at_the_hello() -> None:
    gate = admission(streams=4, per_address=1)
    gate.on_connect(1, "a")
    gate.on_connect(2, "a")  # both may wait: no stream from a yet
    assert gate.on_hello(1) == Admitted()
    refused = gate.on_hello(2)
    assert isinstance(refused, Refused) and "per client address" in refused.reason


def test_closing_frees_whatever_the_connection_held() -> None:
    gate = admission()
    gate.on_connect(1, "a")
    gate.on_connect(2, "a")
    gate.on_hello(2)
    gate.on_close(1)
    gate.on_close(2)
    gate.on_close(99)  # unknown: ignored
    assert gate.pending() == gate.streams() == 0
    assert gate.pending("a") == gate.streams("a") == 0


def test_the_log_throttle_says_each_key_once_per_interval_with_what_it_held() -> None:
    throttle = LogThrottle(60.0, max_keys=2)
    assert throttle.allow(("a", "busy"), 0.0) == 0
    assert throttle.allow(("a", "busy"), 1.0) is None
    assert throttle.allow(("a", "busy"), 2.0) is None
    assert throttle.allow(("b", "busy"), 2.0) == 0  # another key is said at once
    assert throttle.allow(("a", "busy"), 60.0) == 2  # said again, with the 2 held back
    throttle.allow(("c", "busy"), 61.0)  # a third key: the oldest one is forgotten
    assert throttle.allow(("b", "busy"), 62.0) == 0
