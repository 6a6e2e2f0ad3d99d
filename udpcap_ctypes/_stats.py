"""Per-socket receive statistics.

Plain integer attributes, bumped on the receive path (one thread receives at a time, so no lock),
read by anyone through :meth:`Statistics.snapshot`.  Drops are counted by reason so that
``check`` and ``tools/recv.py --stats`` can say *why* traffic did not arrive.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, TypedDict, TypeVar

_T = TypeVar("_T")

# Reasons a captured frame or fragment is dropped as malformed (keys of ``malformed``).
MALFORMED_REASONS = (
    "record_header",         # a capture record whose header lies (caplen above len or past the
                             # batch, bh_hdrlen below the header): the rest of the batch is dropped
    "link_truncated",        # shorter than its link-layer header
    "link_not_ipv4",         # link layer says neither IPv4 nor IPv6 (counted, not an error)
    "ip_truncated",          # shorter than an IPv4 header / its IHL / its total length, or
                             # than an IPv6 header / 40 + its payload length
    "ip_version",            # version field is not 4 (IPv6: 6), or not what the link says
    "ip_header_length",      # IHL < 5
    "ip_total_length",       # total length < header length
    "ip_checksum",           # bad IPv4 header checksum
    "ip6_header_chain",      # IPv6 extension headers: hop-by-hop not first, more than 8, or
                             # one running past the payload
    "ip6_first_fragment",    # an IPv6 first fragment without the whole header chain and UDP
                             # header (RFC 7112)
    "ip6_jumbogram",         # IPv6 payload length 0 (a jumbogram, RFC 2675: not supported)
    "udp_truncated",         # shorter than a UDP header
    "udp_length",            # UDP length < 8 or beyond the IP payload
    "udp_checksum",          # bad UDP checksum (only when verification is on); over IPv6
                             # also a zero checksum, always (RFC 8200 8.1)
    "fragment_offset",       # offset/length beyond 65535
    "fragment_alignment",    # a non-final fragment whose length is not a multiple of 8 (IPv6:
                             # or is empty)
    "fragment_overlap",      # overlapping fragments: the whole datagram is dropped
    "fragment_conflict",     # a second "last fragment" disagreeing on the total length
)


class StatisticsSnapshot(TypedDict):
    """What :meth:`Statistics.snapshot` (and ``UdpcapSocket.statistics()``) returns: every
    counter of :class:`Statistics` by name, plus ``malformed_total``."""

    frames: int
    accepted: int
    accepted_bytes: int
    delivered: int
    delivered_bytes: int
    truncated_deliveries: int
    not_for_us: int
    own_multicast_dropped: int
    queue_dropped: int
    malformed: Dict[str, int]
    fragments: int
    reassembled: int
    reassembly_timeouts: int
    reassembly_evictions: int
    fragments_unwanted: int
    pending_datagrams: int
    pending_bytes: int
    capture_drops: int
    coalesced_waits: int
    devices_failed: int
    devices_lost: int
    malformed_total: int


class Statistics:
    """Counters of one socket.  All attributes are ints; ``malformed`` maps reason -> count."""

    __slots__ = (
        "frames", "accepted", "accepted_bytes", "delivered", "delivered_bytes",
        "truncated_deliveries", "not_for_us",
        "own_multicast_dropped", "queue_dropped", "malformed", "fragments", "reassembled",
        "reassembly_timeouts", "reassembly_evictions", "fragments_unwanted",
        "pending_datagrams", "pending_bytes", "capture_drops", "coalesced_waits",
        "devices_failed", "devices_lost",
    )

    def __init__(self) -> None:
        self.frames = 0                  # frames read from the capture
        self.accepted = 0                # datagrams queued for the caller
        self.accepted_bytes = 0
        self.delivered = 0               # datagrams handed to the caller (settled on snapshot)
        self.delivered_bytes = 0
        self.truncated_deliveries = 0    # datagrams cut to the caller's buffer
        self.not_for_us = 0              # well-formed, but other port/address/group
        self.own_multicast_dropped = 0   # own multicast while multicast loopback is off
        self.queue_dropped = 0           # datagrams over the receive buffer size, not queued
        self.malformed = dict.fromkeys(MALFORMED_REASONS, 0)
        self.fragments = 0               # IP fragments received (IPv4 and IPv6)
        self.reassembled = 0             # datagrams completed from fragments
        self.reassembly_timeouts = 0     # incomplete datagrams expired by age
        self.reassembly_evictions = 0    # incomplete datagrams evicted by the memory/count caps
        self.fragments_unwanted = 0      # fragments of datagrams for other ports, let go early
        self.pending_datagrams = 0       # gauge: datagrams being reassembled
        self.pending_bytes = 0           # gauge: bytes held for reassembly
        self.capture_drops = 0           # pcap_stats ps_drop (+ ps_ifdrop) at the last read
        self.coalesced_waits = 0         # waits that let frames collect (Options.coalesce)
        self.devices_failed = 0          # devices bind() could not open (and went on without)
        self.devices_lost = 0            # captures dropped because their device went away

    def drop(self, reason: str) -> None:
        """Count one malformed frame or fragment."""
        self.malformed[reason] += 1

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    def snapshot(self) -> StatisticsSnapshot:
        """A plain dict copy of every counter (``malformed`` as a nested dict)."""
        out = {name: getattr(self, name) for name in self.__slots__}
        out["malformed"] = dict(self.malformed)
        out["malformed_total"] = self.malformed_total
        # Built from __slots__, so a type checker cannot see the keys; tests/test_typing.py
        # checks that they are exactly StatisticsSnapshot's.
        return out  # type: ignore[return-value]

    def __repr__(self) -> str:
        return "Statistics(%s)" % ", ".join(
            "%s=%r" % item for item in self.snapshot().items() if item[1])


def percentile(sorted_values: Sequence[_T], fraction: float) -> Optional[_T]:
    """Nearest-rank percentile of an ascending list: the smallest value with at least
    *fraction* of the values at or below it (p50 of [1, 2, 3, 4] is 2).  None when empty."""
    if not sorted_values:
        return None
    # ceil(fraction * n), less a hair for float error (0.07 * 100 is 7.000000000000001).
    rank = max(1, math.ceil(fraction * len(sorted_values) - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]
