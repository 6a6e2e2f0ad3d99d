"""IP fragment reassembly in pure Python: IPv4 (RFC 791, RFC 815 bookkeeping) and IPv6 (RFC 8200
section 4.5, RFC 5722), with a Linux-like policy.

One :class:`Reassembler` per shared capture serves both families: its caps, ages, eviction
order and tombstones apply to IPv4 and IPv6 datagrams together.  Fragments are keyed by
``(src, dst, ident)`` (the protocol is always UDP here); IPv6 callers tag the source
(``src6 | _packet.V6_TAG``, bit 128) so that an IPv6 key never equals an IPv4 one, and use the
32-bit identification.  Each incomplete datagram keeps its fragments as copied ``bytes`` pieces
in a list sorted by offset; because overlapping pieces are never kept, the datagram is complete
exactly when the last fragment is known and the pieces add up to its end, and delivery is one
``b"".join``.  The in-order case is an append, out-of-order arrival a ``bisect``: no byte is
copied more than twice.  *payload* is what follows the IP header (IPv4) or the fragment header
(IPv6: the fragmentable part); offsets are in bytes.

Policy (what Linux does since 4.19 unless noted):

* IPv4 (``strict=False``): a fragment whose bytes already lie entirely inside what is held,
  with identical bytes, is a harmless duplicate and ignored.  A fragment that entirely covers
  every held piece it touches, with identical bytes where they meet, replaces those pieces
  (more tolerant than Linux, which drops such a datagram).  Any other overlap drops the whole
  datagram ("fragment_overlap").
* IPv6 (``strict=True``, RFC 5722 and RFC 8200 4.5): any overlap with held data drops the whole
  datagram ("fragment_overlap"), except an exact duplicate of a held fragment -- same offset,
  same length, same bytes, and not claiming to be the last when the held one did not -- which
  is ignored, as RFC 8200 allows ("an implementation may choose to detect this case and drop
  exact duplicate fragments while keeping the other fragments").  Linux is more lenient: its
  ``inet_frag_queue_insert`` (net/ipv4/inet_fragment.c) calls any fragment lying inside one run
  of contiguous held data a duplicate (IPFRAG_DUP) without comparing bytes, and
  ``ip6_frag_queue`` (net/ipv6/reassembly.c) drops just that fragment; every other overlap is
  IPFRAG_OVERLAP, counted as IPSTATS_MIB_REASM_OVERLAPS, and the whole queue is killed.
* ``offset + length > max_payload`` drops the datagram ("fragment_offset"): IPv4 65515 (total
  length 65535 minus the 20-byte header, the default), IPv6 65535 (:data:`MAX_PAYLOAD6`, the
  fragmentable part, as Linux's ``end > IPV6_MAXPLEN``; Linux drops that fragment alone, with
  an ICMPv6 parameter problem).
* A non-final fragment (MF set) that is empty or not a multiple of 8 long drops the datagram
  ("fragment_alignment"; Linux trims such an IPv4 fragment, and drops such an IPv6 fragment
  alone with an ICMPv6 parameter problem).
* Two final fragments that disagree on the end, or data beyond a known end, drop the datagram
  ("fragment_conflict").
* A dropped datagram leaves a tombstone: later fragments of the same key are ignored until the
  datagram would have aged out, so the rest of a broken datagram cannot start a new one
  (Linux forgets a killed queue at once; a later fragment starts a new one).
* The first fragment (offset 0) is asked about once: ``wanted(udp_header)`` gets the 8-byte UDP
  header, which starts *header_offset* bytes into that fragment's payload (IPv4: 0; IPv6: after
  the extension headers that follow the fragment header, which RFC 7112 requires the first
  fragment to hold; the caller finds them).  When it says no, everything held for the datagram
  is let go and its later fragments are ignored the same way (counted in
  ``stats.fragments_unwanted``).  A negative *header_offset*, or one that leaves no 8 bytes in
  the fragment, means the first fragment holds no UDP header: the datagram is let go the same
  way.  ``add(..., wanted=f)`` asks *f* instead of the constructor's callable (a capture shared
  by IPv4 and IPv6 asks a different question per family).
* The first fragment's *tag* (IPv6: the Next Header of its fragment header; RFC 8200 4.5: the
  Next Header values of later fragments may differ, only the offset-zero one counts) is kept
  with the datagram: when :meth:`Reassembler.add` returns a datagram, :attr:`completed_tag` is
  that tag.
* A datagram lives at most ``max_age`` seconds from its first fragment, so a wrapped
  identification never glues a new datagram to stale pieces.  (Linux: 30 s for IPv4, 60 s for
  IPv6; here one age for both, the socket's reassembly_timeout.)
* At most ``max_datagrams`` datagrams and ``max_bytes`` held bytes, both families together.
  Held bytes are what is really kept: payload plus :data:`FRAGMENT_OVERHEAD` per kept fragment,
  so floods of tiny fragments are paid for.  When a limit would be exceeded, expired datagrams
  go first, then the oldest others of either family (``stats.reassembly_evictions``); the
  datagram receiving the fragment is evicted only when it alone cannot fit.
* A datagram is delivered once, whole, or not at all.

A packet that is not a fragment (offset 0, MF clear: an IPv6 atomic fragment, RFC 6946, is
one) never touches the reassembly state, as in Linux: :meth:`Reassembler.add` returns a copy
of it at once.  (The IPv6 parser handles atomic fragments itself and never offers them.)
"""

from __future__ import annotations

import typing
from bisect import bisect_right
from collections import OrderedDict
from typing import Callable, List, Optional, Tuple, Union

from ._stats import Statistics

# A fragment's payload as the receiver hands it (a memoryview into the capture) or as bytes.
Payload = Union[bytes, bytearray, memoryview]
# (src, dst, ident): which datagram a fragment belongs to
Key = Tuple[int, int, int]

# Largest IPv4 payload: total length 65535 minus the minimal 20-byte header.
MAX_PAYLOAD = 65535 - 20
# Largest end (offset + length) of an IPv6 fragment's fragmentable part: the payload length
# field's 65535 (Linux: IPV6_MAXPLEN in ip6_frag_queue).  Jumbograms are never fragmented.
MAX_PAYLOAD6 = 65535
# The UDP header the first fragment must hold for wanted().
UDP_HEADER = 8

# Bytes accounted per kept fragment on top of its payload: roughly what CPython spends on the
# ``bytes`` object header and the list slots that hold it and its offset.
FRAGMENT_OVERHEAD = 64


class _Datagram:
    """One datagram being reassembled."""

    __slots__ = ("created", "starts", "pieces", "received", "held", "total", "checked",
                 "count", "tail", "tag")

    def __init__(self, created: float) -> None:
        self.created = created   # time of the first fragment
        self.starts: List[int] = []       # offsets of the pieces, ascending
        self.pieces: List[bytes] = []     # bytes of each piece; pieces never overlap
        self.received = 0        # payload bytes held
        self.held = 0            # bytes accounted: payload + FRAGMENT_OVERHEAD per piece
        self.total = -1          # end of the datagram once the final fragment is seen
        self.checked = False     # wanted() has approved the first fragment
        self.count = 0           # fragments accepted (not counting duplicates)
        self.tail = 0            # end of the last piece (where an in-order fragment starts)
        self.tag = 0             # the caller's tag of the first fragment (offset 0)


class Reassembler:
    """Reassemble IPv4 and IPv6 fragments of UDP datagrams, with bounded age, memory and count.

    *stats* is a :class:`udpcap_ctypes._stats.Statistics`; *wanted* an optional
    ``callable(udp_header_memoryview) -> bool`` asked once per datagram, on its first fragment.
    """

    # The tag of the first fragment of the datagram add() last returned (see add()).
    completed_tag = 0

    def __init__(self, stats: Statistics, max_age: float = 30.0, max_bytes: int = 4 << 20,
                 max_datagrams: int = 1024,
                 wanted: Optional[Callable[[memoryview], bool]] = None) -> None:
        if not max_age > 0:
            raise ValueError("max_age must be a positive number of seconds, got %r" % (max_age,))
        if max_bytes < 0:
            raise ValueError("max_bytes must be 0 or more, got %r" % (max_bytes,))
        if max_datagrams < 1:
            raise ValueError("max_datagrams must be at least 1, got %r" % (max_datagrams,))
        self._stats = stats
        self._max_age = float(max_age)
        self._max_bytes = int(max_bytes)
        self._max_datagrams = int(max_datagrams)
        self._wanted = wanted
        # key -> _Datagram, oldest first
        self._pending: typing.OrderedDict[Key, _Datagram] = OrderedDict()
        # key -> (since, unwanted): datagrams dropped as broken (False) or unwanted (True).
        self._dead: typing.OrderedDict[Key, Tuple[float, bool]] = OrderedDict()
        self._max_dead = max(256, 4 * self._max_datagrams)
        self._bytes = 0
        self._sweep_every = min(0.5, self._max_age / 4.0)
        self._last_sweep = float("-inf")

    # -- public ---------------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes held for incomplete datagrams (payload + per-fragment overhead)."""
        return self._bytes

    @property
    def pending_datagrams(self) -> int:
        return len(self._pending)

    def add(self, src: int, dst: int, ident: int, offset: int, more_fragments: bool,
            payload: Payload, now: float, *, strict: bool = False,
            max_payload: int = MAX_PAYLOAD, header_offset: int = 0,
            wanted: Optional[Callable[[memoryview], bool]] = None,
            tag: int = 0) -> Optional[bytes]:
        """Offer one fragment; return the whole IP payload when it completes a datagram.

        *payload* starts at byte *offset* of the datagram (IPv4: the data after the IP header;
        IPv6: the fragmentable part after the fragment header).  Keyword arguments (defaults:
        IPv4; see the module doc):

        * *strict*: any overlap but an exact duplicate drops the datagram (IPv6, RFC 5722);
        * *max_payload*: the largest ``offset + len(payload)`` (IPv6: :data:`MAX_PAYLOAD6`);
        * *header_offset*: where the UDP header starts in the payload of the first fragment
          (offset 0; ignored for the others), for wanted(); negative: there is none;
        * *wanted*: asked instead of the constructor's ``wanted`` for this datagram's first
          fragment;
        * *tag*: an int kept from the first fragment (IPv6: its fragment header's Next
          Header); when this call returns a datagram, :attr:`completed_tag` is its first
          fragment's tag.
        """
        if offset == 0 and not more_fragments:
            self.completed_tag = tag
            return bytes(payload)            # not a fragment
        stats = self._stats
        stats.fragments += 1
        if now - self._last_sweep >= self._sweep_every:
            self.expire(now)
        key = (src, dst, ident)
        dg = self._pending.get(key)
        # The common case in few bytecodes: the next fragment of a datagram arriving in order.
        # It starts where the held pieces end (tail: never 0 here, a multiple of 8 because
        # every piece but a final one is), more follow, and the end is not known yet, so it can
        # neither overlap, conflict, complete the datagram nor be the first (wanted()).  The
        # remaining checks of the general path are repeated; whenever one fails, or the payload
        # is not a flat byte view, the general path below decides.
        if (dg is not None and offset == dg.tail and more_fragments and dg.total < 0
                and type(payload) is memoryview and payload.ndim == 1
                and payload.itemsize == 1):
            size = len(payload)
            end = offset + size
            cost = size + FRAGMENT_OVERHEAD
            if (size and not size & 7 and end <= max_payload
                    and now - dg.created < self._max_age
                    and self._bytes + cost <= self._max_bytes):
                dg.starts.append(offset)
                dg.pieces.append(bytes(payload))
                dg.tail = end
                dg.received += size
                dg.held += cost
                dg.count += 1
                self._bytes += cost
                stats.pending_bytes = self._bytes
                return None
        if dg is not None and now - dg.created >= self._max_age:
            self._discard(key, dg)           # stale: never glue a reused id onto it
            stats.reassembly_timeouts += 1
            dg = None
        if dg is None and self._dead:
            mark = self._dead.get(key)
            if mark is not None:
                if now - mark[0] < self._max_age:
                    if mark[1]:
                        stats.fragments_unwanted += 1
                    return None
                del self._dead[key]

        if not isinstance(payload, memoryview):
            payload = memoryview(payload)
        if payload.itemsize != 1 or payload.ndim != 1:
            payload = payload.cast("B")
        size = len(payload)
        end = offset + size
        if offset < 0 or offset & 7 or end > max_payload:
            return self._fail(key, dg, "fragment_offset", now)
        if more_fragments and (size == 0 or size & 7):
            return self._fail(key, dg, "fragment_alignment", now)
        if wanted is None:
            wanted = self._wanted

        if dg is None:
            if offset == 0 and not self._approve(wanted, payload, header_offset):
                return self._unwanted(key, None, now)
            return self._first(key, offset, end, more_fragments, payload, now, tag)

        # Where does the end lie?
        total = dg.total
        starts = dg.starts
        pieces = dg.pieces
        last_end = starts[-1] + len(pieces[-1]) if starts else 0
        if more_fragments:
            if total >= 0 and end > total:
                return self._fail(key, dg, "fragment_conflict", now)
        elif total >= 0:
            if end != total:
                return self._fail(key, dg, "fragment_conflict", now)
        elif end < last_end:
            return self._fail(key, dg, "fragment_conflict", now)

        # Where does the fragment go?
        replace_lo = replace_hi = -1
        if offset >= last_end:
            at = len(starts)                 # after everything held: the in-order case
        else:
            at = bisect_right(starts, offset)
            lo = at
            if at and starts[at - 1] + len(pieces[at - 1]) > offset:
                lo = at - 1
            hi = at
            count = len(starts)
            while hi < count and starts[hi] < end:
                hi += 1
            if lo != hi and strict:
                # RFC 5722 / RFC 8200 4.5: only an exact duplicate of one held fragment is
                # harmless.  A final one is exact only when the end is known (and, checked
                # above, equal): a copy of a held non-final fragment that says "last" is not.
                # (Linux, net/ipv4/inet_fragment.c inet_frag_queue_insert(): IPFRAG_DUP for
                # anything inside one run of held data, bytes unchecked, else IPFRAG_OVERLAP;
                # net/ipv6/reassembly.c ip6_frag_queue(), insert_error: drops a DUP alone and
                # kills the queue on an OVERLAP.)
                if (hi - lo == 1 and starts[lo] == offset and len(pieces[lo]) == size
                        and (more_fragments or total >= 0) and payload == pieces[lo]):
                    return None
                return self._fail(key, dg, "fragment_overlap", now)
            if lo != hi:
                verdict = self._overlap(starts, pieces, lo, hi, offset, end, payload)
                if verdict is None:
                    return self._fail(key, dg, "fragment_overlap", now)
                if verdict == "duplicate":
                    return None
                replace_lo, replace_hi, at = lo, hi, lo

        if offset == 0 and not dg.checked:
            if not self._approve(wanted, payload, header_offset):
                return self._unwanted(key, dg, now)
            dg.checked = True

        if size == 0:                        # an empty final fragment only fixes the end
            if total < 0:
                dg.total = end
                dg.count += 1
            return self._complete(key, dg)

        cost = size + FRAGMENT_OVERHEAD
        if replace_lo >= 0:
            freed = 0
            for k in range(replace_lo, replace_hi):
                freed += len(pieces[k])
            need = cost - freed - (replace_hi - replace_lo) * FRAGMENT_OVERHEAD
        else:
            need = cost
        if need > 0 and not self._make_room(key, need, False, now):
            self._discard(key, dg)
            stats.reassembly_evictions += 1
            return None
        if replace_lo >= 0:
            del starts[replace_lo:replace_hi]
            del pieces[replace_lo:replace_hi]
            dg.received -= freed
            dg.held -= freed + (replace_hi - replace_lo) * FRAGMENT_OVERHEAD
        if at == len(starts):
            starts.append(offset)
            pieces.append(bytes(payload))
        else:
            starts.insert(at, offset)
            pieces.insert(at, bytes(payload))
        dg.received += size
        dg.held += cost
        dg.count += 1
        dg.tail = starts[-1] + len(pieces[-1])
        if offset == 0:
            dg.tag = tag
        self._bytes += need
        if not more_fragments:
            dg.total = end
        return self._complete(key, dg)

    def expire(self, now: float) -> None:
        """Drop datagrams (and tombstones) whose first fragment is *max_age* or more old."""
        self._last_sweep = now
        max_age = self._max_age
        pending = self._pending
        if pending:
            stats = self._stats
            expired = []
            for key, dg in pending.items():  # oldest first: stop at the first young one
                if now - dg.created < max_age:
                    break
                expired.append(key)
            for key in expired:              # erase after iterating, so nothing is skipped
                self._discard(key, pending[key])
            stats.reassembly_timeouts += len(expired)
        dead = self._dead
        while dead:
            key, mark = next(iter(dead.items()))
            if now - mark[0] < max_age:
                break
            del dead[key]

    def clear(self) -> None:
        """Forget everything (datagrams held and tombstones) without counting it."""
        self._pending.clear()
        self._dead.clear()
        self._bytes = 0
        self._stats.pending_datagrams = 0
        self._stats.pending_bytes = 0

    # -- internals ------------------------------------------------------------------------------

    # _first, _fail and _unwanted always return None; they are typed Optional[bytes] because
    # add() returns what they return.
    def _first(self, key: Key, offset: int, end: int, more_fragments: bool, payload: memoryview,
               now: float, tag: int) -> Optional[bytes]:
        """Start a new datagram with this (already validated and, at offset 0, wanted)
        fragment."""
        size = end - offset
        cost = size + FRAGMENT_OVERHEAD if size else 0
        if not self._make_room(key, cost, True, now):
            self._stats.reassembly_evictions += 1
            self._gauge()
            return None
        dg = _Datagram(now)
        dg.checked = offset == 0
        dg.count = 1
        if offset == 0:
            dg.tag = tag
        if size:
            dg.starts.append(offset)
            dg.pieces.append(bytes(payload))
            dg.received = size
            dg.held = cost
            dg.tail = end
        if not more_fragments:
            dg.total = end
        self._pending[key] = dg
        self._bytes += cost
        self._gauge()
        return None      # one fragment never completes a datagram (offset 0 + MF clear is not one)

    @staticmethod
    def _overlap(starts: List[int], pieces: List[bytes], lo: int, hi: int, offset: int, end: int,
                 payload: memoryview) -> Optional[str]:
        """Judge a fragment overlapping pieces[lo:hi]: "duplicate", "replace" or None (bad)."""
        inside = starts[lo] <= offset
        for k in range(lo, hi):
            start = starts[k]
            piece = pieces[k]
            stop = start + len(piece)
            a = start if start > offset else offset
            b = stop if stop < end else end
            if payload[a - offset:b - offset] != piece[a - start:b - start]:
                return None
            if k + 1 < hi and starts[k + 1] != stop:
                inside = False           # a hole inside the fragment's range
        last_stop = starts[hi - 1] + len(pieces[hi - 1])
        if inside and end <= last_stop:
            return "duplicate"
        if starts[lo] >= offset and last_stop <= end:
            return "replace"
        return None

    @staticmethod
    def _approve(wanted: Optional[Callable[[memoryview], bool]], payload: memoryview,
                 header_offset: int) -> bool:
        """Is the datagram whose first fragment's payload this is wanted?  Its UDP header
        starts at *header_offset*; without one (negative, or not 8 bytes left) it is not."""
        if header_offset < 0 or header_offset + UDP_HEADER > len(payload):
            return False
        return wanted is None or wanted(payload[header_offset:header_offset + UDP_HEADER])

    def _complete(self, key: Key, dg: _Datagram) -> Optional[bytes]:
        if dg.total >= 0 and dg.received == dg.total:
            del self._pending[key]
            self._bytes -= dg.held
            self._stats.reassembled += 1
            self._gauge()
            self.completed_tag = dg.tag
            return b"".join(dg.pieces)
        self._gauge()
        return None

    def _make_room(self, key: Key, need: int, new: bool, now: float) -> bool:
        """Evict until *need* more bytes (and, if *new*, one more datagram) fit; False if not."""
        pending = self._pending
        if (not new or len(pending) < self._max_datagrams) and \
                self._bytes + need <= self._max_bytes:
            return True
        self.expire(now)
        stats = self._stats
        while (new and len(pending) >= self._max_datagrams) or \
                self._bytes + need > self._max_bytes:
            victim = None
            for k in pending:                # oldest first; skip the datagram being fed
                if k != key:
                    victim = k
                    break
            if victim is None:
                return False
            self._discard(victim, pending[victim])
            stats.reassembly_evictions += 1
        return True

    def _discard(self, key: Key, dg: _Datagram) -> None:
        del self._pending[key]
        self._bytes -= dg.held
        self._gauge()

    def _bury(self, key: Key, since: float, unwanted: bool) -> None:
        dead = self._dead                    # (add() has already removed an old mark of key)
        if len(dead) >= self._max_dead:
            dead.popitem(last=False)
        dead[key] = (since, unwanted)

    def _fail(self, key: Key, dg: Optional[_Datagram], reason: str,
              now: float) -> Optional[bytes]:
        self._stats.drop(reason)
        since = now
        if dg is not None:
            since = dg.created
            self._discard(key, dg)
        self._bury(key, since, False)
        return None

    def _unwanted(self, key: Key, dg: Optional[_Datagram], now: float) -> Optional[bytes]:
        let_go = 1
        since = now
        if dg is not None:
            let_go += dg.count
            since = dg.created
            self._discard(key, dg)
        self._stats.fragments_unwanted += let_go
        self._bury(key, since, True)
        return None

    def _gauge(self) -> None:
        stats = self._stats
        stats.pending_datagrams = len(self._pending)
        stats.pending_bytes = self._bytes
