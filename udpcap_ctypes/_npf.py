"""Windows: a capture read in batches straight from the Npcap driver, through Packet.dll.

wpcap.dll hands frames out one by one: ``pcap_next_ex`` returns a pointer into its own user
buffer, so every frame costs three ctypes crossings (the call, the header, a ``memmove``).
Underneath, libpcap's ``pcap-npf.c`` fills that user buffer with one ``PacketReceivePacket``
call -- a ``ReadFile`` on the NPF driver, which copies every frame it holds (up to the buffer's
length) as ``struct bpf_hdr`` records (Npcap ``packetWin7/npf/npf/Read.c`` ``NPF_Read``).
:class:`PacketCapture` does what ``pcap_activate_npf`` does, with Packet.dll's own calls, and
:class:`NpfBatchReader` hands Packet.dll a Python-owned buffer: one native call per batch, and
the records are walked in place by ``_packet.make_batch_parser(records="npf")``.

What this reproduces of ``pcap-npf.c`` (libpcap 1.10; Npcap's ``Packet32.cpp``):

* open: ``PacketOpenAdapter``; the link type from ``PacketGetNetType`` (NdisMedium802_3 is
  DLT_EN10MB, NdisMediumNull the loopback adapter's DLT_NULL; anything else is left to wpcap);
* the hardware filter: promiscuous, or all local + directed + broadcast + multicast; a driver
  that answers "not supported" is accepted, as libpcap does;
* ``PacketSetBuff`` (bytes; 1,000,000 when unset, libpcap's WIN32_DEFAULT_KERNEL_BUFFER_SIZE),
  ``PacketSetMinToCopy`` (0 in immediate mode, 16,000 otherwise), a ``ret #snaplen`` program
  as the first filter;
* ``PacketSetReadTimeout(-1)``: a read never waits (``pcap_setnonblock_npf``).  The receiver
  waits on ``PacketGetReadEvent``'s event, which is what ``pcap_getevent`` returns: a
  manual-reset event that ``NPF_Read`` clears and a queued frame sets;
* filters compiled by ``pcap_compile`` on a ``pcap_open_dead`` handle of the adapter's link
  type and snaplen (what ``pcap_compile`` on the live handle does); ``PacketSetBpf`` flushes
  the driver buffer and zeroes its counters (``funcBIOCSETF``), so drops are kept in a base;
* a read that fails with ERROR_GEN_FAILURE or ERROR_DEVICE_REMOVED means the adapter went
  away ("The interface disappeared").

Anything that fails while opening raises ``OSError``; the Windows platform then opens the
device through wpcap.dll instead and logs why (``WindowsPlatform.open_capture``).
"""

from __future__ import annotations

import ctypes
import errno
import logging
from typing import Optional, Tuple

from . import _pcap, _structs
from ._capture import BatchReader, _compile_lock
from ._packet import NPF_RECORDS
from .errors import PcapError

log = logging.getLogger(__name__)

#: Packet.dll functions the batch reader needs; without any of them the device is opened
#: through wpcap.dll.
REQUIRED = ("PacketOpenAdapter", "PacketCloseAdapter", "PacketGetNetType", "PacketSetHwFilter",
            "PacketSetBuff", "PacketSetMinToCopy", "PacketSetReadTimeout", "PacketSetBpf",
            "PacketGetReadEvent", "PacketInitPacket", "PacketReceivePacket", "PacketGetStats")

KERNEL_BUFFER_DEFAULT = 1000000        # pcap-npf.c WIN32_DEFAULT_KERNEL_BUFFER_SIZE
MIN_TO_COPY_BUFFERED = 16000           # pcap-npf.c: MinToCopy without immediate mode
READ_BUFFER_DEFAULT = 256000           # pcap-npf.c WIN32_DEFAULT_USER_BUFFER_SIZE

# winerror.h; NDIS_STATUS_NOT_SUPPORTED | NT_STATUS_CUSTOMER_DEFINED (pcap-npf.c)
ERROR_BAD_UNIT = 20
ERROR_GEN_FAILURE = 31
ERROR_NOT_SUPPORTED = 50
ERROR_DEVICE_REMOVED = 1617
NDIS_NOT_SUPPORTED = 0xC00000BB | 0x20000000
OID_802_3_CURRENT_ADDRESS = 0x01010102

_LINKTYPES = {_pcap.NDIS_MEDIUM_802_3: _pcap.DLT_EN10MB, _pcap.NDIS_MEDIUM_NULL: _pcap.DLT_NULL}
# BPF_RET | BPF_K: accept this many bytes of every frame
_BPF_RET_K = 0x06


def missing_functions(packet_fns) -> Tuple[str, ...]:
    """The :data:`REQUIRED` functions that Packet.dll (a bound table, or None) lacks."""
    if packet_fns is None:
        return REQUIRED
    return tuple(name for name in REQUIRED if not getattr(packet_fns, name))


class PacketCapture:
    """An opened Npcap adapter read through Packet.dll; the interface of
    :class:`._capture.Capture` (filters, pending frames, the read event, drops, close).

    ``snaplen`` bounds every frame (the filters' ``ret``); ``buffer_size`` is the driver's
    buffer in bytes; ``batch_size`` the bytes one read may hand over (at least a whole
    snaplen frame).  Raises ``OSError`` (``PcapError``, ``PermissionError``) when the adapter
    cannot be opened or configured; nothing is left open then.
    """

    swap_filter = None            # Npcap has no atomic filter swap: every filter flushes

    def __init__(self, library, device_name: str, snaplen: int, buffer_size: int,
                 immediate: bool = True, promiscuous: bool = True,
                 batch_size: Optional[int] = None) -> None:
        if library.packet_fns is None:
            raise PcapError(errno.ENOSYS, "Packet.dll was not loaded with wpcap.dll")
        missing = missing_functions(library.packet_fns)
        if missing:
            raise PcapError(errno.ENOSYS, "Packet.dll lacks %s" % ", ".join(missing))
        self._fns = library.fns
        self._packet = packet = library.packet_fns
        self.device_name = device_name
        self.buffer_size = buffer_size or KERNEL_BUFFER_DEFAULT
        self.snaplen = snaplen
        self._drops_base = 0
        self._dead = None
        self.reader = None
        self.handle = _open_adapter(packet, device_name)
        try:
            self.linktype = self._link_type()
            self._set_hardware_filter(promiscuous)
            _configure(packet.PacketSetBuff, self.handle, self.buffer_size,
                       "cannot allocate a driver buffer of %d bytes" % self.buffer_size)
            _configure(packet.PacketSetMinToCopy, self.handle,
                       0 if immediate else MIN_TO_COPY_BUFFERED, "PacketSetMinToCopy failed")
            snap = _structs.bpf_insn(_BPF_RET_K, 0, 0, snaplen)
            self._set_bpf(_structs.bpf_program(1, ctypes.addressof(snap)))
            _configure(packet.PacketSetReadTimeout, self.handle, -1,
                       "PacketSetReadTimeout failed")
            self._event = packet.PacketGetReadEvent(self.handle)
            if not self._event:
                raise PcapError(errno.EIO, "%s: Packet.dll has no read event for the adapter"
                                % device_name)
            self._dead = self._fns.pcap_open_dead(self.linktype, snaplen)
            self.reader = NpfBatchReader(packet, self.handle, snaplen, batch_size)
        except BaseException:
            self.close()
            raise

    def _link_type(self) -> int:
        net_type = _structs.NetType()
        try:
            self._packet.PacketGetNetType(self.handle, ctypes.byref(net_type))
        except OSError as exc:
            raise PcapError(errno.EIO, "%s: cannot determine the network type (%s)"
                            % (self.device_name, exc.strerror or exc)) from None
        linktype = _LINKTYPES.get(net_type.LinkType)
        if linktype is None:
            raise PcapError(errno.EPROTONOSUPPORT, "%s: NDIS medium %d is not Ethernet or "
                            "loopback" % (self.device_name, net_type.LinkType))
        return linktype

    def _set_hardware_filter(self, promiscuous: bool) -> None:
        # pcap-npf.c: a driver that cannot set the filter says "not supported" (loopback
        # adapters, some virtual ones): capture goes on with what it shows.
        if promiscuous:
            mask, tolerated = _pcap.NDIS_PACKET_TYPE_PROMISCUOUS, (ERROR_NOT_SUPPORTED,
                                                                   NDIS_NOT_SUPPORTED)
        else:
            mask = (_pcap.NDIS_PACKET_TYPE_ALL_LOCAL | _pcap.NDIS_PACKET_TYPE_DIRECTED
                    | _pcap.NDIS_PACKET_TYPE_BROADCAST | _pcap.NDIS_PACKET_TYPE_MULTICAST)
            tolerated = (NDIS_NOT_SUPPORTED,)
        try:
            self._packet.PacketSetHwFilter(self.handle, mask)
        except OSError as exc:
            if getattr(exc, "winerror", None) in tolerated:
                return
            raise PcapError(exc.errno or errno.EIO, "%s: failed to set hardware filter to %s "
                            "mode (%s)" % (self.device_name, "promiscuous" if promiscuous
                                           else "non-promiscuous", exc.strerror or exc)) from None

    # -- filters --------------------------------------------------------------------------

    def set_filter(self, expression: str) -> None:
        program = self.compile_filter(expression)
        try:
            self.install_filter(program)
        finally:
            self.free_filter(program)

    def compile_filter(self, expression: str):
        """A ``bpf_program`` for *expression*, compiled for the adapter's link type and
        snaplen; give it back with :meth:`free_filter`."""
        program = _structs.bpf_program()
        with _compile_lock:
            self._fns.pcap_compile(self._dead, ctypes.byref(program), expression.encode("ascii"),
                                   1, _pcap.PCAP_NETMASK_UNKNOWN)
        return program

    def install_filter(self, program) -> None:
        """Make *program* the driver's filter.  The driver discards what it holds and zeroes
        its counters (the caller drains first: SharedCapture.change)."""
        drops = self._driver_drops()
        self._set_bpf(program)
        self._drops_base += drops

    def free_filter(self, program) -> None:
        self._fns.pcap_freecode(ctypes.byref(program))

    def _set_bpf(self, program) -> None:
        try:
            self._packet.PacketSetBpf(self.handle, ctypes.byref(program))
        except OSError as exc:
            raise PcapError(exc.errno or errno.EIO, "%s: the driver refused the filter (%s)"
                            % (self.device_name, exc.strerror or exc)) from None

    # -- reading --------------------------------------------------------------------------

    def pending_records(self) -> Tuple[bytearray, int]:
        """Every frame the driver holds right now, as ``npf`` records in a new buffer:
        ``(bytearray, end)``.  Reads of their own, so the batch reader's buffer (which
        queued datagrams may point into) is left alone."""
        records = bytearray()
        buffer = ctypes.create_string_buffer(self.reader.size)
        packet = _structs.PACKET()
        self._packet.PacketInitPacket(ctypes.byref(packet), buffer, len(buffer))
        while True:
            got = _receive(self._packet, self.handle, packet, self.device_name)
            if not got:
                return records, len(records)
            # Records are aligned from the start of each read: keep every read 4-aligned.
            records += buffer.raw[:got] + bytes(-got % 4)

    def selectable_fd(self) -> int:
        return -1

    def event_handle(self):
        """The driver's read event (what ``pcap_getevent`` returns)."""
        return self._event

    def adapter_mac(self) -> Optional[bytes]:
        """The adapter's current MAC (``OID_802_3_CURRENT_ADDRESS``), or None."""
        request = self._packet.PacketRequest
        if not request:
            return None
        size = ctypes.sizeof(_structs.PACKET_OID_DATA) - 1 + 6
        oid = ctypes.create_string_buffer(size)
        data = _structs.PACKET_OID_DATA.from_buffer(oid)
        data.Oid, data.Length = OID_802_3_CURRENT_ADDRESS, 6
        try:
            request(self.handle, 0, oid)
        except OSError as exc:
            log.debug("%s: PacketRequest(OID_802_3_CURRENT_ADDRESS): %s", self.device_name, exc)
            return None
        offset = _structs.PACKET_OID_DATA.Data.offset
        mac = oid.raw[offset:offset + 6]
        return None if data.Length != 6 or mac == b"\0" * 6 else mac

    def drops(self) -> int:
        """Frames the driver dropped for lack of buffer space since the adapter was opened."""
        return self._drops_base + self._driver_drops()

    def _driver_drops(self) -> int:
        stat = _structs.bpf_stat()
        try:
            self._packet.PacketGetStats(self.handle, ctypes.byref(stat))
        except OSError:
            return 0
        return stat.bs_drop

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.handle:
            # Sets and closes the read event: a thread waiting on it wakes (Packet32.cpp).
            self._packet.PacketCloseAdapter(self.handle)
            self.handle = None
        if self._dead:
            self._fns.pcap_close(self._dead)
            self._dead = None


class NpfBatchReader(BatchReader):
    """One ``PacketReceivePacket`` per batch, into a Python-owned buffer: the driver's
    ``bpf_hdr`` records, walked in place (``records = "npf"``).

    The read never waits (the adapter's read timeout is -1).  A read takes every frame the
    driver holds that fits, so :attr:`exhausted` is True unless the buffer was nearly full.
    """

    records = NPF_RECORDS
    description = "batches: Packet.dll PacketReceivePacket"

    def __init__(self, packet_fns, adapter, snaplen: int, size: Optional[int] = None) -> None:
        header = ctypes.sizeof(_structs.bpf_hdr)
        # At least one whole frame of the snaplen, and its header.
        self.size = max(size or READ_BUFFER_DEFAULT, 2 * (header + snaplen + 4))
        self._full = self.size - (header + snaplen + 4)     # past this, more may be waiting
        self._packet_fns = packet_fns
        self._receive = packet_fns.PacketReceivePacket
        self._adapter = adapter
        self._packet = _structs.PACKET()
        # Sync TRUE, as pcap_read_npf passes (ignored by Packet.dll).
        self._args: Optional[tuple] = (adapter, ctypes.byref(self._packet), 1)
        self.renew()

    def renew(self) -> None:
        self._buffer = ctypes.create_string_buffer(self.size)
        self.view = memoryview(self._buffer).cast("B")
        self._packet_fns.PacketInitPacket(ctypes.byref(self._packet), self._buffer, self.size)

    def refill(self) -> int:
        args = self._args
        if args is None:
            raise PcapError(errno.EBADF, "the capture is closed")
        if not self._receive(*args):
            raise _read_error(ctypes.get_last_error(), "the adapter")
        got = self._packet.ulBytesReceived
        self.exhausted = got <= self._full
        return got

    def close(self) -> None:
        self._args = None


def _open_adapter(packet, device_name: str):
    """``PacketOpenAdapter``, its failures as pcap-npf.c reports them."""
    try:
        return packet.PacketOpenAdapter(device_name.encode("utf-8"))
    except OSError as exc:
        code = getattr(exc, "winerror", None)
        if code == ERROR_BAD_UNIT:
            raise PcapError(errno.ENODEV, "%s: no such adapter" % device_name) from None
        if isinstance(exc, PermissionError):
            raise
        raise PcapError(exc.errno or errno.EIO, "Error opening adapter %s: %s"
                        % (device_name, exc.strerror or exc)) from None


def _configure(function, handle, value, what: str) -> None:
    try:
        function(handle, value)
    except OSError as exc:
        raise PcapError(exc.errno or errno.EIO, "%s (%s)" % (what, exc.strerror or exc)) \
            from None


def _receive(packet_fns, handle, packet, device_name: str) -> int:
    """One non-blocking ``PacketReceivePacket`` into *packet*'s buffer: the bytes read."""
    if not packet_fns.PacketReceivePacket(handle, ctypes.byref(packet), 1):
        raise _read_error(ctypes.get_last_error(), device_name)
    return packet.ulBytesReceived


def _read_error(code: int, where: str) -> PcapError:
    if code in (ERROR_GEN_FAILURE, ERROR_DEVICE_REMOVED):
        name = ("ERROR_GEN_FAILURE/STATUS_UNSUCCESSFUL" if code == ERROR_GEN_FAILURE
                else "ERROR_DEVICE_REMOVED/STATUS_DEVICE_REMOVED")
        return PcapError(errno.EIO, "PacketReceivePacket: The interface disappeared "
                         "(error code %s)" % name)
    from ._win32 import win_error
    exc = win_error("PacketReceivePacket on %s" % where, code)
    return PcapError(errno.EIO, str(exc))
