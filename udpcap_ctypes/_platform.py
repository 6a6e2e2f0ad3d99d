"""Platform glue: everything that differs between Linux, the other POSIX systems and Windows.

The receiver asks a :class:`Platform` which devices there are (with ``loopback`` decided),
how to open a capture on one (snaplen, ring size, reader, platform settings), how this host's
own frames look there (:class:`OwnFrames`), how to wait, and how to hold a multicast
membership.  Receive behaviour that differs lives here: the receiver and the socket ask the
platform object, not ``sys.platform``.  Before a library is loaded there is no platform object,
so ``sys.platform`` is read by the loader (through its OS layer: which library, which struct
layouts), by ``_structs``/``_fixes`` (a layout family, the install text, both for a platform
passed in) and by ``check`` (to describe the machine).

* :class:`LinuxPlatform` -- libpcap on Linux: MTU-sized snaplen (immediate mode cuts the ring
  into slots), the ring fd tells when frames are left, PACKET_IGNORE_OUTGOING on lo, interrupt
  moderation, interface facts from ioctls;
* :class:`PosixPlatform` -- libpcap on macOS and the BSDs;
* :class:`WindowsPlatform` -- Npcap: the loopback adapter by its registry names, own MACs by
  an OID request, events to wait on, the loopback kickstart.
"""

from __future__ import annotations

import abc
import ctypes
import ctypes.util
import errno
import functools
import logging
import mmap
import os
import select
import socket
import struct
import sys
import threading

from . import _capture, _fixes, _pcap
from ._bind import POSIX, Prototype, bind
from ._net import ip_text, mac_text
from .errors import PcapError

log = logging.getLogger(__name__)

#: How frames leave the capture library (the ``reader`` option): a batch per native call, or
#: pcap_next_ex per frame.  UDPCAP_CTYPES_READER chooses for sockets that do not say.
BATCH = "batch"
NEXT_EX = "next_ex"
READERS = (BATCH, NEXT_EX)
READER_ENVIRONMENT = "UDPCAP_CTYPES_READER"


def capture_reader(option):
    """The reader a socket uses: its ``reader`` option, else the environment's choice
    (an unknown value there is ignored, with a warning), else :data:`BATCH`."""
    if option is not None:
        return option
    chosen = os.environ.get(READER_ENVIRONMENT)
    if not chosen:
        return BATCH
    if chosen not in READERS:
        log.warning("%s=%r is not one of %s; using %r", READER_ENVIRONMENT, chosen,
                    ", ".join(READERS), BATCH)
        return BATCH
    return chosen

MAX_SNAPLEN = 262144
LINK_OVERHEAD = 64            # link header + up to two VLAN tags + slack, above the MTU


_platforms = {}
_platforms_lock = threading.Lock()


def current(library):
    """The :class:`Platform` for the loaded capture *library* (one per library and process:
    the C library, the Win32 declarations and the Npcap registry view are shared)."""
    with _platforms_lock:
        platform = _platforms.get(id(library))
        if platform is None or platform.library is not library:
            if library.windows:
                platform = WindowsPlatform(library)
            elif sys.platform.startswith("linux"):
                platform = LinuxPlatform(library)
            else:
                platform = PosixPlatform(library)
            _platforms[id(library)] = platform
        return platform


class OwnFrames:
    """How the frames this host sends look on one capture: the MACs the parser recognises
    them by, and the BPF clause that keeps them out of the capture (None: keep them), which
    may depend on the socket's multicast-loopback flag."""

    __slots__ = ("macs", "_clauses")

    def __init__(self, macs=(), keep_when_looping=True):
        self.macs = tuple(macs)
        clause = " and ".join("not ether src %s" % mac_text(m) for m in self.macs) or None
        # (clause with multicast loopback off, clause with it on)
        self._clauses = (clause, None if keep_when_looping else clause)

    def clause(self, multicast_loopback):
        return self._clauses[bool(multicast_loopback)]


NO_OWN_FRAMES = OwnFrames()


class Platform(abc.ABC):
    """Behaviour shared by every platform; subclasses fill in the differences."""

    # Where a datagram this host sends to a joined group shows up in the capture:
    #   "egress"   -- as an outgoing frame on the sending interface (Linux: the looped-back
    #                 copy is never shown to packet capture);
    #   "loopback" -- on the loopback capture device (Npcap), outgoing frames are filtered.
    own_multicast_seen_on = "egress"
    # Read the captures before every wait?  Needed where the wait cannot see frames libpcap
    # already holds (Npcap's event, a BSD BPF fd); Linux's ring fd tells.
    drain_before_wait = True
    # Does a new filter zero the capture's counters (pcap_stats)?  Capture then keeps a base.
    filter_resets_counters = False
    # Socket options of the port guard, set after its bind (see _kernel_sockets.PortGuard):
    # POSIX lets later sockets share the port (SO_REUSEADDR never takes it from one there).
    port_guard_options = ((socket.SOL_SOCKET, socket.SO_REUSEADDR, 1),)
    libc = None                   # the C library for DumpBatchReader, where there is one

    def __init__(self, library):
        self.library = library
        self.fns = library.fns

    def devices(self):
        """The capture devices, each with ``loopback`` decided for this platform."""
        devices = _capture.find_devices(self.fns)
        for device in devices:
            device.loopback = self._is_loopback(device)
        return devices

    def _is_loopback(self, device):
        return device.loopback_flag

    def open_capture(self, device, buffer_size, immediate, promiscuous, reader=BATCH):
        """Open and activate a capture on *device*, with this platform's snaplen, ring size,
        batch reader (*reader*: :data:`BATCH` or :data:`NEXT_EX`) and settings.  Raises
        OSError (explained, see :meth:`explain_open_error`)."""
        snaplen = self.snaplen_for(device)
        ring = self.ring_size(buffer_size, snaplen, immediate)
        try:
            capture = self._open(device, snaplen, ring, immediate, promiscuous, reader)
        except OSError as exc:
            raise self.explain_open_error(exc) from None
        try:
            self._prepare(capture, device)
        except BaseException:
            capture.close()
            raise
        return capture

    def _open(self, device, snaplen, ring, immediate, promiscuous, reader):
        """The activated capture (wpcap.dll / libpcap): pcap_dispatch into memory where the C
        library can (*reader* BATCH), pcap_next_ex otherwise."""
        return _capture.Capture(
            self.fns, device.name, snaplen, ring, immediate=immediate, promiscuous=promiscuous,
            libc=self.libc if reader == BATCH else None,
            filter_resets_counters=self.filter_resets_counters,
            batch_size=self.batch_size(ring, snaplen, immediate))

    def _prepare(self, capture, device):
        """Platform settings of a freshly activated capture (none by default)."""
        return None

    def snaplen_for(self, device):
        """Large enough for any IPv4 packet plus link headers.  Npcap and BSD buffers are
        byte-based, so a large snaplen costs nothing there (Linux overrides this)."""
        return 65536 + LINK_OVERHEAD

    def ring_size(self, requested, snaplen, immediate):
        """Capture buffer bytes to ask libpcap for, given the user's *requested* size."""
        return requested

    # The capture buffer when the socket does not ask for one (see default_ring).  Npcap and
    # BSD BPF pack frames by their length: 1 MiB holds about 700 frames of 1,400 bytes and
    # thousands of small ones -- more than a default kernel socket keeps (Linux: 256 of the
    # smallest, 92 of 1,400 bytes in rmem_default's 212,992 bytes), and what Npcap itself
    # defaults to (1,000,000 bytes, udpcap's choice too).  On Windows it is nonpaged pool.
    DEFAULT_RING = 1 << 20

    def default_ring(self, device, immediate):
        """The capture buffer (bytes) for *device* when the socket has not set one."""
        return self.DEFAULT_RING

    def network_namespace(self):
        """What tells this thread's network namespace apart, where devices of one name can
        be different devices (Linux); None elsewhere.  Part of a shared capture's key."""
        return None

    def batch_size(self, ring, snaplen, immediate):
        """Bytes of the batch reader's buffer for a capture of *ring* bytes: what the ring
        can hand over at once, at most BatchReader.BUFFER_SIZE (the reader raises it to the
        least it needs for its snaplen)."""
        return min(_capture.BatchReader.BUFFER_SIZE, ring)

    def ring_frames(self, ring, snaplen, immediate):
        """How many frames a capture buffer of *ring* bytes holds, when that is fixed by
        slots (Linux immediate mode); None where frames are packed by their length."""
        return None

    def own_frames(self, device, capture):
        """How this host's own frames look on *capture* (see :class:`OwnFrames`)."""
        return NO_OWN_FRAMES

    def hold_memberships_default(self):
        return True

    def groups_joined(self, groups, captures, multicast_loopback):
        """Called with newly joined groups (ints) once captures are open (nothing to do by
        default)."""
        return None

    def coalesce_default(self, immediate):
        """Seconds of interrupt moderation when the user does not choose (Options.coalesce).

        Off unless measured: it pays where a wake-up costs much more than a frame.
        """
        return 0.0

    def explain_open_error(self, exc):
        """The exception to raise for *exc* from opening a capture (platform diagnosis)."""
        return exc

    @abc.abstractmethod
    def make_waiter(self, captures, immediate):
        """An object with ``wait(timeout)``, ``wake()``, ``set_captures(captures)``, ``close()``."""

    def port_guard_default(self):
        """Options.port_guard when the user does not choose (see _kernel_sockets.PortGuard)."""
        return True

    def make_readiness(self):
        """The object behind ``UdpcapSocket.fileno()`` (see :class:`Readiness`)."""
        return Readiness()

    def interface_address(self, index):
        """The IPv4 address (text) of the interface with this index (an ``ip_mreqn``'s)."""
        raise OSError(errno.ENODEV, "no interface with index %d has an IPv4 address" % index)


class PosixPlatform(Platform):
    """libpcap on macOS and the BSDs: a BPF fd does not see the buffer libpcap has already
    read, so receives drain before they wait."""

    def __init__(self, library):
        super().__init__(library)
        self.libc = _load_libc()

    def make_waiter(self, captures, immediate):
        return PollWaiter(captures)


class LinuxPlatform(PosixPlatform):
    """libpcap on Linux (packet sockets, TPACKET rings)."""

    # In immediate mode the ring fd is readable exactly while unread frames remain.
    drain_before_wait = False

    # A wake-up (poll, pcap_dispatch and the Python around them) costs several times a
    # frame's parsing, and the receiver, faster than any single sender, wakes up for nearly
    # every frame.  A 100 us pause (about 160 us with timer slack) lets 15-25 frames collect at
    # 100-150k datagrams/s: CPU per datagram fell from about 8-10 us to 4 us in
    # tools/bench.py.  Without immediate mode TPACKET_V3 blocks already batch.
    COALESCE = 100e-6

    # A ring of fewer frames than this loses bursts.
    MIN_RING_FRAMES = 32

    def coalesce_default(self, immediate):
        return self.COALESCE if immediate else 0.0

    def _prepare(self, capture, device):
        if device.loopback:
            ignore_outgoing(capture)
        # Every filter after this one is swapped in the kernel (attach_kernel_filter).  This
        # first one goes through pcap_setfilter, and libpcap runs it in user space too, over
        # as many frames as the ring held when it was set: it must pass everything any later
        # filter may pass, since libpcap never learns about those.
        capture.set_filter("udp")
        capture.swap_filter = functools.partial(attach_kernel_filter, capture)

    def snaplen_for(self, device):
        """MTU-sized: in immediate mode the ring is cut into frames of the snaplen (capped at
        the MTU), and a frame (or fragment) never exceeds its device's MTU."""
        answer = _interface_ioctl(device.name, _SIOCGIFMTU)
        if answer is None:
            return super().snaplen_for(device)
        mtu = struct.unpack_from("=i", answer, 16)[0]
        return min(MAX_SNAPLEN, mtu + LINK_OVERHEAD)

    @staticmethod
    def _frame(snaplen):
        # libpcap 1.10 pcap-linux.c create_ring (TPACKET_V2): a frame is TPACKET_ALIGN(64-byte
        # header offset + min(snaplen, MTU + 18)), and our snaplen is MTU + LINK_OVERHEAD.
        return (64 + min(snaplen, snaplen - LINK_OVERHEAD + 18) + 15) & ~15

    def ring_layout(self, ring, snaplen):
        """``(frames, bytes of memory)`` of an immediate-mode ring asked for *ring* bytes.

        libpcap asks for ceil(ring / frame) frames, in blocks of a power of two (the page size
        and up) that hold whole frames only, and rounds the frame count down to whole blocks.
        On ``lo`` (MTU 65536) a frame is 65,632 bytes and takes a 128 KiB block of its own:
        16 MiB buys 256 frames in 32 MiB.  On an MTU-1500 link a frame is 1,584 bytes, two to
        a page: 16 MiB buys 10,592 frames in about 21 MiB.
        """
        frame = self._frame(snaplen)
        block = mmap.PAGESIZE
        while block < frame:
            block <<= 1
        per_block = block // frame
        blocks = -(-ring // frame) // per_block
        return blocks * per_block, blocks * block

    def ring_size(self, requested, snaplen, immediate):
        if not immediate:
            return requested
        return max(requested, self.MIN_RING_FRAMES * self._frame(snaplen))

    def ring_frames(self, ring, snaplen, immediate):
        return self.ring_layout(ring, snaplen)[0] if immediate else None

    # Immediate mode: as many frames as a default kernel socket keeps of the smallest
    # datagrams (rmem_default 212,992 bytes hold 256 on lo), and at least 1 MiB.  On an
    # MTU-1500 link that is 1 MiB (662 frames, 1 MiB of memory); on lo 256 frames of 65,632
    # bytes, each in a 128 KiB block (32 MiB of memory, the most any default costs).
    # TPACKET_V3 (immediate=False) packs frames into blocks: 2 MiB holds thousands.
    DEFAULT_RING_FRAMES = 256
    DEFAULT_RING_V3 = 2 << 20

    def network_namespace(self):
        # A thread's namespace (setns moves threads, not processes): "lo" in another one is
        # another device.
        try:
            return os.stat("/proc/thread-self/ns/net").st_ino
        except OSError:
            return None

    def default_ring(self, device, immediate):
        if not immediate:
            return self.DEFAULT_RING_V3
        return max(self.DEFAULT_RING, self.DEFAULT_RING_FRAMES
                   * self._frame(self.snaplen_for(device)))

    def batch_size(self, ring, snaplen, immediate):
        if not immediate:
            return super().batch_size(ring, snaplen, immediate)
        # Records are 16 bytes of header plus at most the snaplen; a batch is at most
        # MAX_BATCH frames and never more than the ring holds: 101 KiB on an MTU-1500 link,
        # 4 MiB on lo.
        frames = min(self.ring_layout(ring, snaplen)[0], _capture.BatchReader.MAX_BATCH)
        return frames * (16 + snaplen)

    def own_frames(self, device, capture):
        # Our own multicast shows up as outgoing frames: keep them out of the ring unless the
        # socket wants them (the parser checks again: the filter is an optimisation).
        if device.loopback or capture.linktype != _pcap.DLT_EN10MB:
            return NO_OWN_FRAMES
        answer = _interface_ioctl(device.name, _SIOCGIFHWADDR)
        mac = bytes(answer[18:24]) if answer is not None else b""     # ifr_hwaddr.sa_data
        return OwnFrames([mac], keep_when_looping=True) if any(mac) else NO_OWN_FRAMES

    def interface_address(self, index):
        try:
            name = socket.if_indextoname(index)
        except OSError:
            name = None
        answer = _interface_ioctl(name, _SIOCGIFADDR) if name else None
        if answer is None:
            return super().interface_address(index)
        return socket.inet_ntoa(bytes(answer[20:24]))          # ifr_addr.sin_addr


class WindowsPlatform(Platform):
    """Npcap (wpcap.dll, Packet.dll, the NPF driver)."""

    own_multicast_seen_on = "loopback"
    # Npcap's BIOCSETF resets the driver buffer and its Received/Dropped/Accepted counters
    # (npf Packet.c funcBIOCSETF -> Openclos.c NPF_ResetBufferContents).
    filter_resets_counters = True
    # SO_REUSEADDR on Windows lets a socket bind over another process's port: no option.
    port_guard_options = ()
    # Without immediate mode Npcap signals the read event only once 16,000 bytes are buffered
    # (pcap-npf.c MinToCopy; npf Read.c): the waiter then also reads this often (seconds).
    NONIMMEDIATE_READ_INTERVAL = 0.01

    def __init__(self, library, api=None, registry=None, kickstart=None):
        """*api* (``_win32.Win32Api``), *registry* (``read_values(subkey)``) and *kickstart*
        default to the real Windows ones."""
        super().__init__(library)
        from . import _win32
        self._win32 = _win32
        self.api = api if api is not None else _win32.Win32Api()
        self._kickstart = kickstart or _win32.loopback_kickstart
        try:
            self.install = _win32.read_npcap_registry(registry or _win32.WinregReader())
        except OSError as exc:
            log.warning("cannot read Npcap's registry settings (%s); the loopback adapter is "
                        "recognised by its name \\Device\\NPF_Loopback only", exc)
            self.install = None

    def _is_loopback(self, device):
        return self._win32.is_loopback_device(device.name, self.install) or device.loopback_flag

    def _open(self, device, snaplen, ring, immediate, promiscuous, reader):
        # The batch reader reads the NPF driver through Packet.dll (_npf).  Where it cannot --
        # no Packet.dll, a function missing, an adapter it cannot open or a medium it does not
        # know -- the device is opened through wpcap.dll, and the log says why.
        if reader == BATCH:
            from . import _npf
            try:
                return _npf.PacketCapture(
                    self.library, device.name, snaplen, ring, immediate, promiscuous,
                    self.batch_size(ring, snaplen, immediate))
            except OSError as exc:
                log.info("%s: reading through wpcap.dll (pcap_next_ex), not Packet.dll's "
                         "batches: %s", device.name, exc)
        return super()._open(device, snaplen, ring, immediate, promiscuous, NEXT_EX)

    def batch_size(self, ring, snaplen, immediate):
        # One read takes every frame the driver holds that fits: what wpcap reads at once
        # (pcap-npf.c's 256,000-byte user buffer) keeps one batch's parse short.
        return min(256000, ring)

    def own_frames(self, device, capture):
        # Npcap shows the frames this host sends on the real adapter, and locally sent
        # multicast again on the loopback adapter: drop the former, as udpcap does.
        if device.loopback or capture.linktype != _pcap.DLT_EN10MB:
            return NO_OWN_FRAMES
        mac = self.adapter_mac(capture)
        return OwnFrames([mac], keep_when_looping=False) if mac else NO_OWN_FRAMES

    def adapter_mac(self, capture):
        """The MAC of *capture*'s adapter (OID_802_3_CURRENT_ADDRESS), or None: asked through
        Packet.dll by its batch reader's capture, through wpcap.dll otherwise."""
        ask = getattr(capture, "adapter_mac", None)
        if ask is not None:
            return ask()
        return self._win32.adapter_mac(self.fns, capture.handle)

    def make_waiter(self, captures, immediate):
        waiter = self._win32.EventWaiter(
            self.api, interval=None if immediate else self.NONIMMEDIATE_READ_INTERVAL)
        waiter.set_captures(captures)
        return waiter

    def explain_open_error(self, exc):
        # Admin-only mode: with the UAC prompt of Npcap's helper declined, older Packet.dll
        # versions fail the open with ERROR_BAD_UNIT, which pcap-npf.c reports as
        # PCAP_ERROR_NO_SUCH_DEVICE for a device pcap_findalldevs has just listed.
        if getattr(exc, "errno", None) != errno.ENODEV or isinstance(exc, PermissionError):
            return exc
        install = self.install
        if install is None or not install.admin_only:
            return exc
        try:
            if self._win32.is_elevated(self.api):
                return exc
        except OSError:
            pass                          # elevation unknown: admin-only is the likely cause
        return PermissionError(errno.EPERM, "%s. Npcap is restricted to administrators and "
                               "this process is not elevated. %s"
                               % (exc.strerror or exc, _fixes.ADMIN_ONLY))

    def hold_memberships_default(self):
        # Keeping Winsock away from the traffic is the point on Windows: opt-in only.
        return False

    def port_guard_default(self):
        # A guard socket receives every unicast datagram to the port through Winsock and the
        # firewall, the cost this package exists to avoid: opt-in on Windows.  Without it, a
        # sender that did connect() sees WSAECONNRESET after each ICMP port-unreachable.
        return False

    def make_readiness(self):
        raise OSError(errno.EOPNOTSUPP, "fileno() is not available on Windows: Npcap signals "
                      "frames with events, not file descriptors. Receive in a thread of its "
                      "own (blocking recvfrom), or poll with settimeout(0)")

    def groups_joined(self, groups, captures, multicast_loopback):
        # Windows loops this host's own multicast to the Npcap loopback adapter only once a
        # local socket has been a member: udpcap's kickstart (one short-lived socket).
        if not (groups and multicast_loopback and any(c.is_loopback for c in captures)):
            return
        try:
            self._kickstart([ip_text(g) for g in sorted(groups)])
        except OSError as exc:
            log.warning("multicast loopback kickstart failed (%s): datagrams this host sends "
                        "to the group may not be captured until another local program joins it",
                        exc)


# Linux interface ioctls.  They answer for the network namespace of the calling thread, which
# /sys/class/net (the namespace that mounted sysfs) does not.
_SIOCGIFADDR = 0x8915
_SIOCGIFMTU = 0x8921
_SIOCGIFHWADDR = 0x8927


def _interface_ioctl(name, request):
    """The 40-byte ``struct ifreq`` answer for Linux interface *name*, or None."""
    try:
        import fcntl
        ifreq = struct.pack("16s24x", name.encode("utf-8")[:15])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            return fcntl.ioctl(probe.fileno(), request, ifreq)
    except (OSError, ImportError, UnicodeError):
        return None


def _close_fds(fds):
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class FlagPipe:
    """A pipe that is readable exactly while a flag is set: :meth:`set` and :meth:`clear`
    from any thread, under a lock, so that the pipe holds a byte exactly while :attr:`flag`
    is true (a stale byte would leave a poll readable with nothing to do, and a wait or a
    selector loop would spin).  :attr:`flag` may be read without the lock."""

    def __init__(self):
        self.fd, self._write = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write, False)
        self.flag = False
        self._lock = threading.Lock()

    def set(self):
        if not self.flag:
            with self._lock:
                if not self.flag and self._write >= 0:
                    self.flag = True
                    os.write(self._write, b"x")

    def clear(self):
        if self.flag:
            with self._lock:
                if self.flag:
                    self.flag = False
                    try:
                        os.read(self.fd, 64)
                    except OSError:
                        pass

    def close(self):
        """Close both ends; a later :meth:`set` does nothing."""
        with self._lock:
            fds, self.fd, self._write = (self.fd, self._write), -1, -1
        _close_fds(fds)


class PollWaiter:
    """Waits on the selectable fds of POSIX captures plus a wake pipe (``select.poll``).

    Why not let libpcap wait (a blocking ``pcap_dispatch``)?  It would save a native call per
    wake-up, but in libpcap 1.10 a blocking read on Linux returns only for a packet, an error
    or ``pcap_breakloop``: it polls again after its timeout and after EINTR, so receive
    timeouts and Ctrl-C would need a helper thread, and a break checked after a packet can
    return ``PCAP_ERROR_BREAK`` for frames already handed to the callback.
    """

    FALLBACK_SLICE = 0.01     # for devices without a selectable fd

    def __init__(self, captures):
        self._read_fd, self._write_fd = os.pipe()
        for fd in (self._read_fd, self._write_fd):
            os.set_blocking(fd, False)
        self._notice = FlagPipe()       # readable while another thread's notice is pending
        self.set_captures(captures)

    def set_captures(self, captures):
        """Wait on these captures from now on (a thread already waiting finishes its wait on
        the old set).  Bit *i* of a :meth:`wait` mask stands for ``captures[i]``."""
        fds = []
        needs_slices = False
        for capture in captures:
            fd = capture.selectable_fd()
            if fd < 0:
                needs_slices = True
            fds.append(fd)
        self.capture_fds = fds          # -1 where a capture has no selectable fd
        self._all = (1 << len(fds)) - 1
        self._needs_slices = needs_slices
        self._polls = {}
        self._poll = self._new_poll(self._all)

    @property
    def wake_fd(self):
        """Readable once :meth:`wake` was called (for :class:`Readiness`)."""
        return self._read_fd

    @property
    def notified(self):
        """A notice is pending (read without a lock)."""
        return self._notice.flag

    def notify(self):
        """Make waits return until :meth:`clear_notify` (any thread): another socket's thread
        read a shared capture and queued datagrams for this socket."""
        self._notice.set()

    def clear_notify(self):
        """The receiver is about to look at its queue: later notifications count again."""
        self._notice.clear()

    def _new_poll(self, mask):
        poll = select.poll()
        poll.register(self._read_fd, select.POLLIN)
        poll.register(self._notice.fd, select.POLLIN)
        for index, fd in enumerate(self.capture_fds):
            if fd >= 0 and mask >> index & 1:
                poll.register(fd, select.POLLIN)
        return poll

    def wait(self, timeout, mask=None):
        """Block until a capture may have frames, :meth:`wake` or :meth:`notify` was called,
        or *timeout* seconds pass (None: no limit).  *mask*: the captures to wait on (bit *i*
        for the *i*-th of :meth:`set_captures`; None: all); wake and notify always count.
        Returns the ready ``(fd, events)`` pairs of ``poll()``, empty (false) only on timeout:
        a capture fd not among them had no frame in its ring (Linux: the ring's fd is level
        triggered).  May return early (spuriously); callers re-check and loop to their own
        deadline."""
        if mask is None or mask == self._all:
            poll = self._poll
        else:
            poll = self._polls.get(mask)
            if poll is None:
                poll = self._polls[mask] = self._new_poll(mask)
        if self._needs_slices:
            timeout = self.FALLBACK_SLICE if timeout is None else min(timeout,
                                                                      self.FALLBACK_SLICE)
        # poll() takes a C int of milliseconds: a longer timeout returns early (callers loop).
        milliseconds = None if timeout is None else max(0, min(_MAX_POLL_MS,
                                                                int(timeout * 1000.0 + 0.999)))
        try:
            return poll.poll(milliseconds)
        except RuntimeError:
            # Another thread is inside this poll object ("concurrent poll() invocation"):
            # several threads may block in receives on one socket, so wait on a poll of its own.
            return self._new_poll(self._all if mask is None else mask).poll(milliseconds)

    def wake(self):
        """Make the current and every later :meth:`wait` return at once (as Windows' manual-reset
        wake event does).  Any thread; ``close()`` uses it, so the pipe is never emptied."""
        try:
            os.write(self._write_fd, b"x")
        except (BlockingIOError, OSError):
            pass          # already woken (pipe full) or closing

    def close(self):
        self._notice.close()
        fds, self._read_fd, self._write_fd = (self._read_fd, self._write_fd), -1, -1
        _close_fds(fds)


_MAX_POLL_MS = 2 ** 31 - 1


class Readiness:
    """What ``UdpcapSocket.fileno()`` returns on POSIX: one epoll (Linux) or kqueue (BSD,
    macOS) fd over the captures' selectable fds, the waiter's wake pipe (``close()``), and a
    pipe of its own that is readable while datagrams wait in the receiver's queue or in
    libpcap's buffer, where no capture fd shows them (:meth:`set` / :meth:`clear`).  Level
    triggered: readable while any of them is."""

    def __init__(self):
        if hasattr(select, "epoll"):
            self._poller = select.epoll()
        elif hasattr(select, "kqueue"):
            self._poller = select.kqueue()
        else:
            raise OSError(errno.EOPNOTSUPP, "fileno() needs epoll or kqueue, which this "
                                            "platform lacks")
        self._queued = FlagPipe()       # readable while datagrams wait where no fd shows them
        self._fds = set()
        # False: leave the capture fds out (an owner that waits on them itself: the asyncio
        # endpoint reads each shared capture once per event loop); the queue pipe and the
        # wake pipe still count.
        self.watch_captures = True
        self._waiter = None
        self._captures = ()
        self._watch({self._queued.fd})

    def fileno(self):
        return self._poller.fileno()

    def watch(self, waiter, captures):
        """Cover these captures (and *waiter*'s wake pipe) from now on."""
        self._waiter, self._captures = waiter, tuple(captures)
        fds = {self._queued.fd, waiter.wake_fd}
        if self.watch_captures:
            fds.update(fd for fd in (c.selectable_fd() for c in captures) if fd >= 0)
        self._watch(fds)

    def leave_captures_out(self):
        """Stop covering the capture fds, now and after later :meth:`watch` calls (see
        :attr:`watch_captures`)."""
        self.watch_captures = False
        if self._waiter is not None:
            self.watch(self._waiter, self._captures)

    def _watch(self, fds):
        epoll = hasattr(self._poller, "register")
        for fd in self._fds - fds:
            if epoll:
                self._poller.unregister(fd)
            else:
                self._poller.control([select.kevent(fd, select.KQ_FILTER_READ,
                                                    select.KQ_EV_DELETE)], 0)
        for fd in fds - self._fds:
            if epoll:
                self._poller.register(fd, select.EPOLLIN)
            else:
                self._poller.control([select.kevent(fd, select.KQ_FILTER_READ,
                                                    select.KQ_EV_ADD)], 0)
        self._fds = fds

    def set(self):
        """Readable from now on (any thread: another socket's may queue for this one)."""
        self._queued.set()

    def clear(self):
        self._queued.clear()

    def close(self):
        self._poller.close()
        self._queued.close()


# The C library calls of DumpBatchReader (fmemopen streams for pcap_dump).
LIBC_PROTOTYPES = [
    Prototype("fmemopen", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p],
              platforms=POSIX, since="POSIX.1-2008"),
    Prototype("setvbuf", ctypes.c_int,
              [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t], platforms=POSIX),
    Prototype("fseek", ctypes.c_int, [ctypes.c_void_p, ctypes.c_long, ctypes.c_int],
              platforms=POSIX),
    Prototype("ftell", ctypes.c_long, [ctypes.c_void_p], platforms=POSIX),
    Prototype("fclose", ctypes.c_int, [ctypes.c_void_p], platforms=POSIX),
]


# <linux/if_packet.h>: SOL_PACKET level, PACKET_IGNORE_OUTGOING option (Linux 4.20).
_SOL_PACKET = 263
_PACKET_IGNORE_OUTGOING = 23


def ignore_outgoing(capture):
    """Linux: have the kernel skip outgoing frames for this capture's packet socket.

    On ``lo`` every datagram passes packet capture twice, outgoing and incoming.  libpcap drops
    the outgoing copy, but only after the kernel has copied it into the ring: half the ring's
    slots and half the copying go to frames nobody reads.  (``pcap_setdirection`` only filters
    in userland, and an ``inbound`` filter term cannot be evaluated by libpcap's userland
    filter, which it runs on the first frame after each ``pcap_setfilter``: that frame would
    be lost.)  Returns True when the option took effect; older kernels keep the old behaviour.
    """
    fd = capture.selectable_fd()
    if fd < 0:
        return False
    # A dup of the fd shares the socket; closing it leaves the capture's own fd alone.
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
        return True
    except OSError as exc:
        log.debug("PACKET_IGNORE_OUTGOING on %s: %s (kernel older than 4.20?)",
                  capture.device_name, exc)
        return False
    finally:
        sock.close()


# <asm-generic/socket.h>: SO_ATTACH_FILTER.  <linux/filter.h>: struct sock_fprog.
_SO_ATTACH_FILTER = 26


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach_kernel_filter(capture, program):
    """Linux: replace the capture's kernel filter with *program* (a compiled
    ``bpf_program``) in one ``SO_ATTACH_FILTER``, which the kernel swaps atomically.

    ``pcap_setfilter`` on Linux first attaches a filter that rejects everything and drains
    the socket, then attaches the new one (pcap-linux.c set_kernel_filter): frames that
    arrive in between are rejected and not even counted as drops.  Measured with a stream
    while another socket of the process joined and left a group: 10-100 of 2,000 datagrams
    lost that way.  The compiled program needs no change for the kernel on our link types
    (libpcap's fix_program only rewrites loads for cooked captures), and libpcap keeps
    filtering in the kernel only.  Raises PcapError when the kernel refuses the program.
    """
    fd = capture.selectable_fd()
    fprog = _SockFprog(program.bf_len, program.bf_insns)
    sock = socket.socket(fileno=os.dup(fd))     # a dup shares the packet socket
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(fprog))
    except OSError as exc:
        raise PcapError(exc.errno or errno.EINVAL, "cannot replace the filter on %s: %s"
                        % (capture.device_name, exc.strerror or exc)) from None
    finally:
        sock.close()                            # the dup only


def _load_libc():
    """libc with fmemopen, or None (then captures fall back to pcap_next_ex)."""
    try:
        libc = bind(ctypes.CDLL(None, use_errno=True), LIBC_PROTOTYPES, False, "the C library")
    except OSError as exc:
        log.debug("no C library (%s); using pcap_next_ex", exc)
        return None
    if not libc.fmemopen:
        log.debug("no fmemopen in the C library; using pcap_next_ex")
        return None
    return libc
