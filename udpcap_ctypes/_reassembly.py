"""IPv4 fragment reassembly in pure Python (RFC 791, RFC 815 bookkeeping, Linux-like policy).

One :class:`Reassembler` per receiving socket.  Fragments are keyed by ``(src, dst, ident)``
(the protocol is always UDP here).  Each incomplete datagram keeps its fragments as copied
``bytes`` pieces in a list sorted by offset; because overlapping pieces are never kept, the
datagram is complete exactly when the last fragment is known and the pieces add up to its end,
and delivery is one ``b"".join``.  The in-order case is an append, out-of-order arrival a
``bisect``: no byte is copied more than twice.

Policy (what Linux does since 4.19 unless noted):

* A fragment whose bytes already lie entirely inside what is held, with identical bytes, is a
  harmless duplicate and ignored.  A fragment that entirely covers every held piece it touches,
  with identical bytes where they meet, replaces those pieces (more tolerant than Linux, which
  drops such a datagram).  Any other overlap drops the whole datagram ("fragment_overlap").
* ``offset + length > 65515`` drops the datagram ("fragment_offset").
* A non-final fragment (MF set) that is empty or not a multiple of 8 long drops the datagram
  ("fragment_alignment"; Linux trims such a fragment instead).
* Two final fragments that disagree on the end, or data beyond a known end, drop the datagram
  ("fragment_conflict").
* A dropped datagram leaves a tombstone: later fragments of the same key are ignored until the
  datagram would have aged out, so the rest of a broken datagram cannot start a new one.
* When ``wanted(udp_header)`` says no for the first fragment, everything held for the datagram
  is let go and its later fragments are ignored the same way (counted in
  ``stats.fragments_unwanted``).
* A datagram lives at most ``max_age`` seconds from its first fragment, so a wrapped 16-bit
  identification never glues a new datagram to stale pieces.
* At most ``max_datagrams`` datagrams and ``max_bytes`` held bytes.  Held bytes are what is
  really kept: payload plus :data:`FRAGMENT_OVERHEAD` per kept fragment, so floods of tiny
  fragments are paid for.  When a limit would be exceeded, expired datagrams go first, then the
  oldest others (``stats.reassembly_evictions``); the datagram receiving the fragment is evicted
  only when it alone cannot fit.
* A datagram is delivered once, whole, or not at all.

A packet that is not a fragment (offset 0, MF clear) never touches the reassembly state, as in
Linux: :meth:`Reassembler.add` returns a copy of it at once.
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

# Bytes accounted per kept fragment on top of its payload: roughly what CPython spends on the
# ``bytes`` object header and the list slots that hold it and its offset.
FRAGMENT_OVERHEAD = 64


class _Datagram:
    """One datagram being reassembled."""

    __slots__ = ("created", "starts", "pieces", "received", "held", "total", "checked",
                 "count", "tail")

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


class Reassembler:
    """Reassemble IPv4 fragments of UDP datagrams, with bounded age, memory and count.

    *stats* is a :class:`udpcap_ctypes._stats.Statistics`; *wanted* an optional
    ``callable(udp_header_memoryview) -> bool`` asked once per datagram, on its first fragment.
    """

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
            payload: Payload, now: float) -> Optional[bytes]:
        """Offer one fragment; return the whole IP payload when it completes a datagram."""
        if offset == 0 and not more_fragments:
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
            if (size and not size & 7 and end <= MAX_PAYLOAD
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
        if offset < 0 or offset & 7 or end > MAX_PAYLOAD:
            return self._fail(key, dg, "fragment_offset", now)
        if more_fragments and (size == 0 or size & 7):
            return self._fail(key, dg, "fragment_alignment", now)

        if dg is None:
            return self._first(key, offset, end, more_fragments, payload, now)

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
            if lo != hi:
                verdict = self._overlap(starts, pieces, lo, hi, offset, end, payload)
                if verdict is None:
                    return self._fail(key, dg, "fragment_overlap", now)
                if verdict == "duplicate":
                    return None
                replace_lo, replace_hi, at = lo, hi, lo

        if offset == 0 and not dg.checked and self._wanted is not None:
            if not self._wanted(payload[:8]):
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
               now: float) -> Optional[bytes]:
        """Start a new datagram with this (already validated) fragment."""
        if offset == 0 and self._wanted is not None and not self._wanted(payload[:8]):
            return self._unwanted(key, None, now)
        size = end - offset
        cost = size + FRAGMENT_OVERHEAD if size else 0
        if not self._make_room(key, cost, True, now):
            self._stats.reassembly_evictions += 1
            self._gauge()
            return None
        dg = _Datagram(now)
        dg.checked = offset == 0
        dg.count = 1
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

    def _complete(self, key: Key, dg: _Datagram) -> Optional[bytes]:
        if dg.total >= 0 and dg.received == dg.total:
            del self._pending[key]
            self._bytes -= dg.held
            self._stats.reassembled += 1
            self._gauge()
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
