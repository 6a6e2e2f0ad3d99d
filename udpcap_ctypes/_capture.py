"""One open capture device: configure, activate, filter, read frames, count drops.

This is the native half of the receive path.  It hands frames to the pure parser in
:mod:`._packet` as ``(buffer, start, end)`` triples and never interprets them itself.

Two frame readers exist:

* :class:`DumpBatchReader` (POSIX): one ``pcap_dispatch`` call moves a whole batch of frames from
  the kernel ring into one Python-owned buffer, entirely in C -- the per-packet callback is
  libpcap's own ``pcap_dump`` writing into an ``fmemopen`` stream over that buffer.  Python then
  walks the batch with ``struct`` at no native-call cost per frame.  This is what lets a
  ctypes receiver keep up with the kernel socket.
* :class:`NextExReader` (everywhere, the Windows path): ``pcap_next_ex`` per frame.
"""

import ctypes
import errno
import logging
import struct
import sys
import threading

from . import _pcap, _structs
from .errors import PcapError

log = logging.getLogger("udpcap_ctypes")

# pcap_compile() keeps parser state in globals in many libpcap versions: serialise it.
_compile_lock = threading.Lock()

_CAPLEN_OFFSET = _structs.pcap_pkthdr.caplen.offset
_SF_RECORD = struct.Struct("=IIII")        # savefile record header: ts_sec, ts_usec, caplen, len
_SF_CAPLEN = struct.Struct("=I")


class Device:
    """A capture device as ``pcap_findalldevs`` lists it."""

    __slots__ = ("name", "description", "flags", "ipv4")

    def __init__(self, name, description, flags, ipv4):
        self.name = name                  # str, e.g. "lo", "eth0", r"\Device\NPF_{GUID}"
        self.description = description    # str or None
        self.flags = flags                # PCAP_IF_* bits
        self.ipv4 = ipv4                  # [(address, netmask, broadcast)] as ints (0 if none)

    @property
    def loopback_flag(self):
        return bool(self.flags & _pcap.PCAP_IF_LOOPBACK)

    @property
    def up(self):
        return bool(self.flags & _pcap.PCAP_IF_UP)

    def __repr__(self):
        return "Device(%r, ipv4=%r, flags=%#x)" % (self.name, self.ipv4, self.flags)


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
            desc = (ctypes.string_at(dev.description).decode("utf-8", "replace")
                    if dev.description else None)
            devices.append(Device(name, desc, dev.flags, _ipv4_addresses(dev.addresses)))
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


def _sockaddr_ipv4(pointer):
    if not pointer:
        return None
    sin = _structs.sockaddr_in.from_address(pointer)
    if sin.sin_family != _AF_INET:
        return None
    return int.from_bytes(bytes(sin.sin_addr), "big")


_AF_INET = 2


class Capture:
    """An activated, non-blocking capture handle on one device.

    ``snaplen`` should follow the device MTU (see :func:`._platform.snaplen_for`): in immediate
    mode Linux sizes every ring frame from it, so a needlessly large snaplen wastes the buffer.
    """

    def __init__(self, fns, device_name, snaplen, buffer_size, immediate=True, promiscuous=True,
                 timeout_ms=1, libc=None):
        self._fns = fns
        self.device_name = device_name
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
                raise _pcap.status_error("pcap_activate(%s)" % device_name, status, self.handle)
            if status > 0:
                log.warning("pcap_activate(%s): %s", device_name, self._status_text(status))
            fns.pcap_setnonblock(self.handle, 1, errbuf)
            self.linktype = fns.pcap_datalink(self.handle)
            self.snaplen = fns.pcap_snapshot(self.handle)
            if libc is not None and getattr(fns, "pcap_dump_fopen", None):
                self.reader = DumpBatchReader(fns, libc, self.handle, self.snaplen)
            else:
                self.reader = NextExReader(fns, self.handle)
        except BaseException:
            self.close()
            raise

    def _status_text(self, status):
        raw = self._fns.pcap_geterr(self.handle)
        text = raw.decode("utf-8", "replace") if raw else ""
        return text or (self._fns.pcap_statustostr(status) or b"").decode("utf-8", "replace")

    def set_filter(self, expression):
        """Compile and install a BPF filter (serialised process-wide)."""
        program = _structs.bpf_program()
        with _compile_lock:
            self._fns.pcap_compile(self.handle, ctypes.byref(program), expression.encode("ascii"),
                                   1, _pcap.PCAP_NETMASK_UNKNOWN)
        try:
            self._fns.pcap_setfilter(self.handle, ctypes.byref(program))
        finally:
            self._fns.pcap_freecode(ctypes.byref(program))

    def selectable_fd(self):
        """POSIX: the fd to poll, or -1 when the device has none."""
        return self._fns.pcap_get_selectable_fd(self.handle)

    def event_handle(self):
        """Windows: the driver's read event (``pcap_getevent``)."""
        return self._fns.pcap_getevent(self.handle)

    def drops(self):
        """Frames the kernel/driver dropped for lack of buffer space (ps_drop + ps_ifdrop)."""
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


class NextExReader:
    """Frames one at a time with ``pcap_next_ex``; each frame is valid until the next read."""

    def __init__(self, fns, handle):
        self._next_ex = fns.pcap_next_ex
        self._handle = handle
        self._fns = fns
        self._header = ctypes.POINTER(_structs.pcap_pkthdr)()
        self._data = ctypes.c_void_p()
        self._args = (handle, ctypes.byref(self._header), ctypes.byref(self._data))
        self._header_address = ctypes.cast(ctypes.pointer(self._header),
                                           ctypes.POINTER(ctypes.c_void_p))

    def read(self):
        """``(buffer, start, end)`` of the next frame, or None when nothing is queued."""
        status = self._next_ex(*self._args)
        if status == 1:
            caplen = ctypes.c_uint32.from_address(
                self._header_address.contents.value + _CAPLEN_OFFSET).value
            frame = (ctypes.c_ubyte * caplen).from_address(self._data.value)
            return (memoryview(frame).cast("B"), 0, caplen)
        if status == 0 or status == _pcap.PCAP_ERROR_BREAK:
            return None
        raise _pcap.status_error("pcap_next_ex", status, self._handle)

    def close(self):
        self._args = None


class DumpBatchReader:
    """POSIX fast path: batches of frames copied by libpcap itself into one Python buffer.

    ``pcap_dispatch(handle, count, pcap_dump, dumper)`` runs libpcap's savefile writer as the
    per-packet callback, in C; the dumper writes to an unbuffered ``fmemopen`` stream over
    :attr:`view`.  ``count`` is chosen so that a full batch of snaplen-sized records always
    fits, so the stream can never truncate a record.  Frames stay valid until the batch is used
    up and the next one is read.
    """

    BUFFER_SIZE = 4 << 20

    def __init__(self, fns, libc, handle, snaplen, size=None):
        size = size or max(self.BUFFER_SIZE, 4 * (snaplen + 16))
        self._fns = fns
        self._libc = libc
        self._handle = handle
        self._buffer = ctypes.create_string_buffer(size)
        self.view = memoryview(self._buffer).cast("B")
        self._count = max(1, (size - 64) // (16 + snaplen))
        self._dispatch = fns.pcap_dispatch
        self._flush = fns.pcap_dump_flush
        self._ftell = fns.pcap_dump_ftell
        self._callback = ctypes.cast(fns.pcap_dump, ctypes.c_void_p).value
        self._dumper = None
        stream = libc.fmemopen(self._buffer, size, b"w")
        if not stream:
            raise PcapError(ctypes.get_errno() or errno.ENOMEM, "fmemopen failed")
        libc.setvbuf(stream, None, libc.IONBF, 0)
        self._stream = stream
        try:
            self._dumper = fns.pcap_dump_fopen(handle, stream)   # now owns the stream
        except BaseException:
            libc.fclose(stream)
            raise
        self._pos = self._end = 0

    def read(self):
        """``(buffer, start, end)`` of the next frame, or None when nothing is queued."""
        pos = self._pos
        if pos >= self._end:
            if not self._refill():
                return None
            pos = 0
        start = pos + 16
        end = start + _SF_CAPLEN.unpack_from(self.view, pos + 8)[0]
        self._pos = end
        return (self.view, start, end)

    def _refill(self):
        self._libc.fseek(self._stream, 0, 0)
        count = self._dispatch(self._handle, self._count, self._callback, self._dumper)
        if count <= 0:
            self._pos = self._end = 0
            if count < 0 and count != _pcap.PCAP_ERROR_BREAK:
                raise _pcap.status_error("pcap_dispatch", count, self._handle)
            return False
        self._flush(self._dumper)
        self._end = self._ftell(self._dumper)
        self._pos = 0
        return self._end > 0

    def close(self):
        if self._dumper:
            self._fns.pcap_dump_close(self._dumper)     # also fcloses the stream
            self._dumper = None
            self._stream = None
