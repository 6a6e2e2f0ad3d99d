"""One open capture device: configure, activate, filter, read frames, count drops.

This is the native half of the receive path.  It hands batches of frames to the pure parser
in :mod:`._packet` and never interprets a frame itself.

Frames are read in batches (:class:`BatchReader`): records in the savefile layout in one
Python-owned buffer, which the receiver walks with ``struct`` and no native call per frame.

* :class:`DumpBatchReader` (POSIX): one ``pcap_dispatch`` call moves a whole batch from the
  kernel ring into the buffer, entirely in C -- the per-packet callback is libpcap's own
  ``pcap_dump`` writing into an ``fmemopen`` stream over that buffer: one native call per
  batch, no Python callback per frame.
* :class:`NextExReader` (everywhere; the Windows path): ``pcap_next_ex`` and a ``memmove`` per
  frame into the same kind of buffer.
"""

import ctypes
import errno
import logging
import socket
import struct
import threading

from . import _pcap, _structs
from ._packet import SAVEFILE_RECORDS
from .errors import PcapError

log = logging.getLogger(__name__)

# pcap_compile() keeps parser state in globals in many libpcap versions: serialise it.
_compile_lock = threading.Lock()


def _pkthdr_struct():
    """``struct pcap_pkthdr`` as this platform lays it out (from the ctypes layout, so the
    32-bit ``timeval`` of Windows and the padded one of macOS come out right)."""
    hdr, tv = _structs.pcap_pkthdr, _structs.timeval
    fields = [(hdr.ts.offset + tv.tv_sec.offset, tv.tv_sec.size),
              (hdr.ts.offset + tv.tv_usec.offset, tv.tv_usec.size),
              (hdr.caplen.offset, 4), (hdr.len.offset, 4)]
    fmt, pos = "=", 0
    for offset, size in fields:
        fmt += "%dx" % (offset - pos) if offset > pos else ""
        fmt += {4: "I", 8: "Q"}[size]
        pos = offset + size
    return struct.Struct(fmt + "%dx" % (ctypes.sizeof(hdr) - pos))


_PKTHDR = _pkthdr_struct()
_IONBF = 2                                 # setvbuf's unbuffered mode: glibc, musl, BSD, macOS
_SF_RECORD = struct.Struct("=IIII")        # savefile record header: ts_sec, ts_usec, caplen, len


class Device:
    """A capture device as ``pcap_findalldevs`` lists it."""

    __slots__ = ("name", "description", "flags", "ipv4", "ipv6", "loopback")

    def __init__(self, name, description, flags, ipv4, loopback=None, ipv6=()):
        self.name = name                  # str, e.g. "lo", "eth0", r"\Device\NPF_{GUID}"
        self.description = description    # str or None
        self.flags = flags                # PCAP_IF_* bits
        self.ipv4 = ipv4                  # [(address, netmask, broadcast)] as ints (0 if none)
        self.ipv6 = list(ipv6)            # [(address, scope id)]: 128-bit ints, scope 0 or not
        # The loopback capture device?  Decided by the platform (Platform.devices): Npcap's
        # can be a legacy adapter that only the registry names.
        self.loopback = self.loopback_flag if loopback is None else loopback

    @property
    def loopback_flag(self):
        return bool(self.flags & _pcap.PCAP_IF_LOOPBACK)

    @property
    def up(self):
        return bool(self.flags & _pcap.PCAP_IF_UP)

    @property
    def scope_id(self):
        """The interface index that scopes this device's link-local addresses (what a socket
        reports as a link-local source's scope id), or 0 when it has none."""
        for _address, scope in self.ipv6:
            if scope:
                return scope
        return 0

    def __repr__(self):
        return "Device(%r, ipv4=%r, ipv6=%r, flags=%#x)" % (self.name, self.ipv4, self.ipv6,
                                                           self.flags)


def find_devices(fns):
    """All capture devices, with their IPv4 addresses (``pcap_findalldevs``)."""
    errbuf = ctypes.create_string_buffer(_pcap.PCAP_ERRBUF_SIZE)
    head = ctypes.c_void_p()
    fns.pcap_findalldevs(ctypes.byref(head), errbuf)
    devices = []
    try:
        node = head.value
        while node:
            dev = _structs.pcap_if.from_address(node)
            name = ctypes.string_at(dev.name).decode("utf-8", "replace")
            desc = (_pcap.decode_description(fns, ctypes.string_at(dev.description))
                    if dev.description else None)
            devices.append(Device(name, desc, dev.flags, _ipv4_addresses(dev.addresses),
                                  ipv6=_ipv6_addresses(dev.addresses)))
            node = dev.next
    finally:
        if head.value:
            fns.pcap_freealldevs(head)
    return devices


def _ipv4_addresses(node):
    out = []
    while node:
        entry = _structs.pcap_addr.from_address(node)
        address = _sockaddr_ipv4(entry.addr)
        if address is not None:
            out.append((address, _sockaddr_ipv4(entry.netmask) or 0,
                        _sockaddr_ipv4(entry.broadaddr) or 0))
        node = entry.next
    return out


def _ipv6_addresses(node):
    out = []
    while node:
        entry = _structs.pcap_addr.from_address(node)
        if entry.addr:
            sin6 = _structs.sockaddr_in6.from_address(entry.addr)
            if sin6.sin6_family == _AF_INET6:
                out.append((int.from_bytes(bytes(sin6.sin6_addr), "big"), sin6.sin6_scope_id))
        node = entry.next
    return out


def _sockaddr_ipv4(pointer):
    if not pointer:
        return None
    sin = _structs.sockaddr_in.from_address(pointer)
    if sin.sin_family != _AF_INET:
        return None
    return int.from_bytes(bytes(sin.sin_addr), "big")


_AF_INET = 2
# AF_INET6 in the capture library's sockaddrs: Winsock's 23 on Windows, the host's elsewhere
# (10 Linux, 30 macOS, 28 FreeBSD, 24 NetBSD/OpenBSD).
_AF_INET6 = 23 if _structs.host_family() == _structs.WINDOWS else getattr(socket, "AF_INET6", -1)


class Capture:
    """An activated, non-blocking capture handle on one device.

    ``snaplen`` should follow the device MTU on Linux (see ``Platform.snaplen_for``): in
    immediate mode Linux sizes every ring slot from it, so a needlessly large snaplen wastes
    the buffer.
    """

    def __init__(self, fns, device_name, snaplen, buffer_size, immediate=True, promiscuous=True,
                 timeout_ms=1, libc=None, filter_resets_counters=False, batch_size=None):
        self._fns = fns
        self.device_name = device_name
        self.buffer_size = buffer_size
        # Npcap zeroes its counters on every new filter: drops before it are kept in a base.
        self._filter_resets_counters = filter_resets_counters
        self._drops_base = 0
        # Replaces a filter without pcap_setfilter, where the platform has a way that never
        # loses a frame (set by the platform: LinuxPlatform, attach_kernel_filter).
        self.swap_filter = None
        self._filtered = False
        errbuf = ctypes.create_string_buffer(_pcap.PCAP_ERRBUF_SIZE)
        self.handle = fns.pcap_create(device_name.encode("utf-8"), errbuf)
        self.reader = None
        try:
            fns.pcap_set_snaplen(self.handle, snaplen)
            fns.pcap_set_promisc(self.handle, 1 if promiscuous else 0)
            fns.pcap_set_immediate_mode(self.handle, 1 if immediate else 0)
            fns.pcap_set_buffer_size(self.handle, buffer_size)
            fns.pcap_set_timeout(self.handle, timeout_ms)
            status = fns.pcap_activate(self.handle)
            if status < 0:
                raise _pcap.status_error(fns, "pcap_activate(%s)" % device_name, status,
                                         self.handle)
            if status > 0:
                log.warning("pcap_activate(%s): %s", device_name, self._status_text(status))
            fns.pcap_setnonblock(self.handle, 1, errbuf)
            self.linktype = fns.pcap_datalink(self.handle)
            self.snaplen = fns.pcap_snapshot(self.handle)
            if libc is not None and getattr(fns, "pcap_dump_fopen", None):
                self.reader = DumpBatchReader(fns, libc, self.handle, self.snaplen, batch_size)
            else:
                self.reader = NextExReader(fns, self.handle, self.snaplen, batch_size)
        except BaseException:
            self.close()
            raise

    def _status_text(self, status):
        return (_pcap.decode_text(self._fns, self._fns.pcap_geterr(self.handle))
                or _pcap.decode_text(self._fns, self._fns.pcap_statustostr(status)))

    def set_filter(self, expression):
        """Compile and install a BPF filter (see :meth:`compile_filter`,
        :meth:`install_filter`)."""
        program = self.compile_filter(expression)
        try:
            self.install_filter(program)
        finally:
            self.free_filter(program)

    def compile_filter(self, expression):
        """A compiled ``bpf_program`` for *expression* (pcap_compile is serialised
        process-wide); give it back with :meth:`free_filter`."""
        program = _structs.bpf_program()
        with _compile_lock:
            self._fns.pcap_compile(self.handle, ctypes.byref(program), expression.encode("ascii"),
                                   1, _pcap.PCAP_NETMASK_UNKNOWN)
        return program

    def install_filter(self, program):
        """Make a compiled filter the capture's.  The first goes through ``pcap_setfilter``,
        later ones through :attr:`swap_filter` where the platform set one (a shared capture
        changes its filter whenever any of its sockets binds, closes, joins or leaves)."""
        if self._filtered and self.swap_filter is not None:
            self.swap_filter(program)
            return
        drops = self._driver_drops() if self._filter_resets_counters else 0
        self._fns.pcap_setfilter(self.handle, ctypes.byref(program))
        self._drops_base += drops
        self._filtered = True

    def free_filter(self, program):
        self._fns.pcap_freecode(ctypes.byref(program))

    def pending_records(self):
        """Every frame the capture holds right now, as records of the reader's layout
        (savefile records here) in a new buffer.

        ``(bytearray, end)``; reads with ``pcap_next_ex`` and leaves the batch reader's
        buffer alone (queued datagrams may still point into it).  Used before a new filter
        replaces the old one: Npcap discards what is pending when the filter changes.
        """
        records = bytearray()
        header = ctypes.POINTER(_structs.pcap_pkthdr)()
        data = ctypes.c_void_p()
        next_ex = self._fns.pcap_next_ex
        while True:
            status = next_ex(self.handle, ctypes.byref(header), ctypes.byref(data))
            if status != 1:
                if status == 0 or status == _pcap.PCAP_ERROR_BREAK:
                    return records, len(records)
                raise _pcap.status_error(self._fns, "pcap_next_ex", status, self.handle)
            ts_sec, ts_usec, caplen, length = _PKTHDR.unpack(
                ctypes.string_at(ctypes.addressof(header.contents), _PKTHDR.size))
            records += _SF_RECORD.pack(ts_sec & 0xFFFFFFFF, ts_usec & 0xFFFFFFFF, caplen, length)
            records += ctypes.string_at(data.value, caplen)

    def selectable_fd(self):
        """POSIX: the fd to poll, or -1 when the device has none."""
        return self._fns.pcap_get_selectable_fd(self.handle)

    def event_handle(self):
        """Windows: the driver's read event (``pcap_getevent``)."""
        return self._fns.pcap_getevent(self.handle)

    def drops(self):
        """Frames the kernel/driver dropped for lack of buffer space (ps_drop + ps_ifdrop),
        since activation: never smaller than an earlier answer."""
        return self._drops_base + self._driver_drops()

    def _driver_drops(self):
        st = _structs.pcap_stat()
        try:
            self._fns.pcap_stats(self.handle, ctypes.byref(st))
        except PcapError:
            return 0
        return st.ps_drop + st.ps_ifdrop

    def close(self):
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.handle:
            self._fns.pcap_close(self.handle)
            self.handle = None


class BatchReader:
    """Frames in batches of records in one Python-owned buffer.

    :meth:`refill` reads one batch and returns the offset just past its last record in
    :attr:`view` (0: the capture had nothing); the records lie back to back from :attr:`start`
    in the layout :attr:`records` names:

    * ``SAVEFILE_RECORDS``: a 16-byte header (``ts_sec, ts_usec, caplen, len`` as native
      ``uint32``) followed by ``caplen`` captured bytes (libpcap's ``pcap_dump``);
    * ``NPF_RECORDS``: Npcap's ``struct bpf_hdr`` (``bh_hdrlen`` bytes, 20) followed by
      ``bh_caplen`` bytes, each record starting ``Packet_WORDALIGN``'ed from the buffer's start
      (what the NPF driver writes; ``_npf.NpfBatchReader``).

    The caller walks them without a native call per frame (``_packet.make_batch_parser``).
    Records stay valid until the next :meth:`refill`.  :attr:`exhausted` says whether the last
    refill stopped because the capture had nothing more (rather than for lack of room).
    """

    BUFFER_SIZE = 2 << 20
    MAX_BATCH = 64          # frames per refill at most: several devices stay fair
    records = SAVEFILE_RECORDS
    description = "?"       # what capture_readers() and check report
    view = None
    start = 0
    exhausted = True

    def refill(self):
        raise NotImplementedError

    def renew(self):
        """Write the next batches into a new buffer and never touch the current one again:
        datagrams queued as views into it stay valid for as long as they are referenced."""
        raise NotImplementedError

    def close(self):
        pass


class NextExReader(BatchReader):
    """``pcap_next_ex`` per frame, each copied (``memmove``, in C) into the batch buffer.

    The portable path, and Windows' (wpcap.dll cannot write a savefile to memory).  At most
    ``max_batch`` frames per refill keep several devices fair.
    """

    description = "pcap_next_ex, one call per frame"

    def __init__(self, fns, handle, snaplen, size=None, max_batch=BatchReader.MAX_BATCH):
        # At least two records of the snaplen (see refill's room check).
        size = max(size or self.BUFFER_SIZE, 2 * (snaplen + 16))
        self._fns = fns
        self._next_ex = fns.pcap_next_ex
        self._handle = handle
        self._header = ctypes.POINTER(_structs.pcap_pkthdr)()
        self._header_address = ctypes.c_void_p.from_buffer(self._header)   # aliases it
        self._data = ctypes.c_void_p()
        self._args = (handle, ctypes.byref(self._header), ctypes.byref(self._data))
        self._size = size
        self._room = size - 16 - snaplen        # a record may start at any pos <= _room
        self._max_batch = max_batch
        self.renew()

    def renew(self):
        self._buffer = ctypes.create_string_buffer(self._size)
        self._address = ctypes.addressof(self._buffer)
        self.view = memoryview(self._buffer).cast("B")

    def refill(self):
        pos = count = 0
        header = self._header_address
        data = self._data
        view = self.view
        while count < self._max_batch and pos <= self._room:
            status = self._next_ex(*self._args)
            if status != 1:
                if status == 0 or status == _pcap.PCAP_ERROR_BREAK:
                    self.exhausted = True
                    return pos
                raise _pcap.status_error(self._fns, "pcap_next_ex", status, self._handle)
            ts_sec, ts_usec, caplen, length = _PKTHDR.unpack(
                ctypes.string_at(header.value, _PKTHDR.size))
            ctypes.memmove(self._address + pos + 16, data.value, caplen)
            _SF_RECORD.pack_into(view, pos, ts_sec & 0xFFFFFFFF, ts_usec & 0xFFFFFFFF, caplen,
                                 length)
            pos += 16 + caplen
            count += 1
        self.exhausted = False
        return pos

    def close(self):
        self._args = None


class DumpBatchReader(BatchReader):
    """POSIX fast path: a whole batch copied by libpcap itself, in C.

    ``pcap_dispatch(handle, count, pcap_dump, dumper)`` runs libpcap's savefile writer as the
    per-packet callback; the dumper writes to an unbuffered ``fmemopen`` stream over
    :attr:`view`.  Batches follow each other in the buffer; ``count`` is limited to what fits
    after the previous batch (snaplen-sized records), so the stream can never truncate a
    record, and the stream is rewound only when too little room is left.  One native call per
    batch, none per frame.
    """

    MIN_BATCH = 16
    description = "batches: pcap_dispatch into memory (pcap_dump over fmemopen)"

    def __init__(self, fns, libc, handle, snaplen, size=None):
        # At least one batch of MIN_BATCH snaplen records (a count of 0 would mean "all" to
        # pcap_dispatch); by default MAX_BATCH of them.
        size = max(size or self.MAX_BATCH * (snaplen + 16), self.MIN_BATCH * (snaplen + 16))
        self._fns = fns
        self._libc = libc
        self._handle = handle
        self._size = size
        self._record = 16 + snaplen
        self._dispatch = fns.pcap_dispatch
        self._fseek = libc.fseek
        self._ftell = libc.ftell
        self._callback = ctypes.cast(fns.pcap_dump, ctypes.c_void_p).value
        self._dumper = None
        self.renew()

    def renew(self):
        libc, fns = self._libc, self._fns
        buffer = ctypes.create_string_buffer(self._size)
        stream = libc.fmemopen(buffer, self._size, b"w")
        if not stream:
            raise PcapError(ctypes.get_errno() or errno.ENOMEM, "fmemopen failed")
        libc.setvbuf(stream, None, _IONBF, 0)
        try:
            dumper = fns.pcap_dump_fopen(self._handle, stream)   # now owns the stream
        except BaseException:
            libc.fclose(stream)
            raise
        self._fseek(stream, 0, 0)           # overwrite the savefile header it wrote
        self.close()                        # the old stream; its buffer lives on in views
        self._buffer = buffer
        self.view = memoryview(buffer).cast("B")
        self._stream = stream
        self._dumper = dumper
        self._write = 0                     # where the stream will write next

    def refill(self):
        room = (self._size - self._write) // self._record
        if room < self.MIN_BATCH:
            self._fseek(self._stream, 0, 0)
            self._write = 0
            room = self._size // self._record
        count = self._dispatch(self._handle, room, self._callback, self._dumper)
        self.exhausted = count < room
        if count <= 0:
            if count < 0 and count != _pcap.PCAP_ERROR_BREAK:
                raise _pcap.status_error(self._fns, "pcap_dispatch", count, self._handle)
            return 0
        self.start = self._write
        # The unbuffered stream holds exactly the records written: it is at the batch's end.
        self._write = self._ftell(self._stream)
        return self._write

    def close(self):
        if self._dumper:
            self._fns.pcap_dump_close(self._dumper)     # also fcloses the stream
            self._dumper = None
            self._stream = None
