"""asyncio endpoint: a receive-only ``DatagramTransport`` over :class:`UdpcapSocket`.

:func:`create_datagram_endpoint` is shaped like ``loop.create_datagram_endpoint``.  The
transport reads the socket in one of two ways, chosen by what the socket and the loop offer:

* **readiness** (POSIX, selector loops): ``UdpcapSocket.fileno()`` is a pollable fd.  It is
  registered with ``loop.add_reader`` and the socket is made non-blocking; each readiness
  callback takes at most :data:`MAX_BATCH` datagrams (``recvfrom_batch``) and returns to the
  loop, which calls again while the fd stays readable.  Idle, nothing runs.  The capture fds
  are left out of that fd and waited on once per loop (:class:`_CaptureReaders`): sockets of
  one process share a capture per device, and with every endpoint's fd covering it, each
  frame would wake every endpoint on the device (50 endpoints, traffic to one: 109 µs of CPU
  a datagram instead of 21).  One endpoint reads the capture; what it queues for the others
  makes their fds readable.
* **reader thread** (Windows, where ``fileno()`` raises ``OSError`` because Npcap signals
  events; or a loop without ``add_reader``, such as the Proactor loop, which raises
  ``NotImplementedError``): one thread blocks in ``recvfrom_batch`` and hands each batch to
  the loop with ``call_soon_threadsafe``.  At most :data:`MAX_PENDING_BATCHES` batches wait
  for the loop; beyond that the thread waits, and datagrams stay in the socket's buffers
  (which drop, as a socket's would, when they are full).

No platform is named here: the exceptions say which way works.  Closing the transport, a
fatal receive error, or closing the loop release everything at once: the reader is removed
or the thread woken (``close()`` wakes a blocked receive) and joined, and the socket closed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import warnings
import weakref
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, TypeVar, Union

from .errors import NotBoundError, SocketClosedError
from .udpcap_socket import Address, Host, UdpcapSocket

log = logging.getLogger(__name__)

# Datagrams handed to the protocol per loop callback: then the loop runs other work first.
MAX_BATCH = 256
# Batches the reader thread may have handed to the loop that the loop has not delivered yet.
MAX_PENDING_BATCHES = 4
# The largest datagram: an IPv4 UDP payload is at most 65507 bytes.
MAX_DATAGRAM = 65535
# Pause after a receive error that the socket survives, so that an error that persists
# costs one attempt per pause instead of a busy loop.
ERROR_PAUSE = 0.01
# How long closing waits for the reader thread (close() wakes it within 100 ms).
JOIN_TIMEOUT = 5.0
# errnos that mean the socket will never deliver again: closed (EBADF, also after fork),
# not bound (ENOTCONN), every captured device gone or the bound one (ENETDOWN).
_FATAL_ERRNOS = frozenset((errno.EBADF, errno.ENOTCONN, errno.ENETDOWN))

_ProtocolT = TypeVar("_ProtocolT", bound=asyncio.BaseProtocol)
# What the reader thread hands to the loop: a batch, or the error a receive raised.
_Item = Union[List[Tuple[bytes, Address]], BaseException]


def _is_fatal(exc: BaseException) -> bool:
    """True when *exc*, raised by a receive, means the socket will never deliver again."""
    if isinstance(exc, (SocketClosedError, NotBoundError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _FATAL_ERRNOS
    return True                          # not an OS error: a bug, never retried


class UdpcapDatagramTransport(asyncio.DatagramTransport):
    """A receive-only ``asyncio.DatagramTransport`` that owns an :class:`UdpcapSocket`.

    Made by :func:`create_datagram_endpoint`.  The protocol gets ``connection_made(transport)``
    first, then ``datagram_received(data, (host, port))`` once per datagram, in the order the
    socket delivers them; ``error_received(exc)`` for a receive error that the socket survives
    (reading goes on after a short pause); and ``connection_lost(exc)`` exactly once at the
    end: ``None`` after :meth:`close`, :meth:`abort` or the loop's ``close()``, the exception
    after a fatal receive error (the socket was closed behind the transport's back, every
    captured device went away: ``ENETDOWN``).  No ``datagram_received`` follows ``close()``.

    An exception raised by ``datagram_received`` or ``error_received`` goes to the loop's
    exception handler and the next datagram is still delivered.

    Extra info: ``"socket"`` (the UdpcapSocket: join and leave groups on it, read its
    ``statistics()``; do not receive from it, change its timeout or close it yourself),
    ``"sockname"`` (as ``getsockname()`` at creation) and ``"peername"`` (``None``).

    :meth:`sendto` raises ``OSError(EOPNOTSUPP)``: this endpoint only receives.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: UdpcapSocket,
                 protocol: asyncio.BaseProtocol,
                 waiter: "Optional[asyncio.Future[None]]" = None) -> None:
        super().__init__(extra={"socket": sock, "sockname": sock.getsockname(),
                                "peername": None})
        self._loop = loop
        self._sock: Optional[UdpcapSocket] = sock
        self._protocol: asyncio.BaseProtocol = protocol
        self._closing = False            # close() or a fatal error: nothing more is delivered
        self._lost = False               # connection_lost has been called
        self._fd: Optional[int] = None   # readiness: the fd registered with add_reader
        self._readers: Optional[_CaptureReaders] = None   # readiness: its capture fds' reader
        self._captures: Any = None       # readiness: the receiver's capture list it read fds of
        self._capture_fds: Set[int] = set()
        self._paused: Optional[asyncio.TimerHandle] = None   # readiness: the pause after an error
        self._thread: Optional[threading.Thread] = None       # reader thread
        self._credit = threading.Semaphore(MAX_PENDING_BATCHES)
        self._stop = threading.Event()   # set when the reader thread is to leave
        _track(loop, self)
        loop.call_soon(self._connection_made, waiter)

    # -- the DatagramTransport interface -------------------------------------------------------

    def sendto(self, data: Any, addr: Any = None) -> None:
        """Not supported: raises ``OSError(EOPNOTSUPP)``.  This endpoint only receives; send
        with a ``socket.socket`` or with asyncio's own ``loop.create_datagram_endpoint``."""
        raise OSError(errno.EOPNOTSUPP, "an udpcap_ctypes endpoint only receives: send with a "
                                        "socket.socket or loop.create_datagram_endpoint()")

    def close(self) -> None:
        """Stop receiving, close the socket and join the reader thread, if any, before
        returning; ``connection_lost(None)`` follows from the loop.  Idempotent."""
        self._shut(None)

    def abort(self) -> None:
        """As :meth:`close`: nothing waits to be sent."""
        self._shut(None)

    def is_closing(self) -> bool:
        return self._closing

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_write_buffer_size(self) -> int:
        return 0

    def __repr__(self) -> str:
        if self._lost:
            state = "closed"
        elif self._closing:
            state = "closing"
        else:
            state = "reading with %s" % ("a thread" if self._thread is not None else
                                         "add_reader" if self._fd is not None else "nothing yet")
        return "<%s %s:%d %s>" % ((type(self).__name__,) + self.get_extra_info("sockname")
                                  + (state,))

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None and not getattr(self, "_closing", True):
            _warn("unclosed transport %r" % (self,), ResourceWarning, source=self)
            self._closing = True
            sock.close()                 # wakes and ends a reader thread

    # -- start ---------------------------------------------------------------------------------

    def _connection_made(self, waiter: "Optional[asyncio.Future[None]]") -> None:
        try:
            self._protocol.connection_made(self)
            if not self._closing:
                self._start_reading()
        except BaseException as exc:
            self._shut(None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _start_reading(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            fd: Optional[int] = sock.fileno()
        except SocketClosedError:
            raise
        except OSError as exc:           # no pollable fd (Windows: Npcap signals events)
            log.debug("%r: no fd to wait on (%s); receiving in a thread", self, exc)
            fd = None
        if fd is not None:
            sock.setblocking(False)
            try:
                self._loop.add_reader(fd, self._read_ready)
            except NotImplementedError:  # a loop without add_reader (Proactor)
                log.debug("%r: the loop has no add_reader; receiving in a thread", self)
            else:
                self._fd = fd
                # Wait on the capture fds once per loop, not once per endpoint.
                readiness = sock._readiness         # made by fileno() above
                assert readiness is not None
                readiness.leave_captures_out()
                self._readers = _CaptureReaders.of(self._loop)
                self._readers.add(self, self._reads_fds())
                return
        sock.settimeout(None)
        self._thread = threading.Thread(
            target=self._reader_thread, name="udpcap-asyncio-reader %s:%d" % sock.getsockname()[:2],
            daemon=True)                 # never holds up interpreter exit
        self._thread.start()

    # -- readiness path ------------------------------------------------------------------------

    def _read_ready(self) -> None:
        sock = self._sock
        if self._closing or sock is None:
            return
        try:
            batch = sock.recvfrom_batch(MAX_BATCH, MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return                       # spurious readiness: allowed, nothing to do
        except Exception as exc:
            if _is_fatal(exc):
                self._fatal(exc)
            else:
                self._pause_after_error()
                self._error_received(exc)
            return
        self._deliver(batch)

    def _pause_after_error(self) -> None:
        if self._fd is not None and self._paused is None:
            self._loop.remove_reader(self._fd)
            self._paused = self._loop.call_later(ERROR_PAUSE, self._resume_after_error)

    def _resume_after_error(self) -> None:
        self._paused = None
        if not self._closing and self._fd is not None:
            self._loop.add_reader(self._fd, self._read_ready)
            if self._readers is not None:
                self._readers.resume(self)

    def _reads_fds(self) -> Set[int]:
        """The selectable fds of the captures this endpoint's socket reads now (recomputed
        only when the receiver's capture list changes: a device went away)."""
        sock = self._sock
        receiver = getattr(sock, "_receiver", None)
        if receiver is None or self._closing:
            return set()
        if receiver.captures is not self._captures:
            self._captures = receiver.captures
            self._capture_fds = {fd for fd in (c.capture.selectable_fd()
                                               for c in receiver.captures) if fd >= 0}
        return self._capture_fds

    # -- reader thread path --------------------------------------------------------------------

    def _reader_thread(self) -> None:
        sock = self._sock
        assert sock is not None
        loop = self._loop
        credit = self._credit
        stop = self._stop
        while True:
            credit.acquire()             # back-pressure: released as the loop delivers
            if stop.is_set():
                return
            item: _Item
            try:
                item = sock.recvfrom_batch(MAX_BATCH, MAX_DATAGRAM)
            except BaseException as exc:
                if stop.is_set():        # close() woke the receive
                    return
                item = exc
            try:
                loop.call_soon_threadsafe(self._handle_item, item)
            except RuntimeError:         # the loop closed without telling this transport
                log.debug("%r: the event loop is closed; closing the socket", self)
                self._closing = True
                sock.close()
                return
            if isinstance(item, BaseException):
                if _is_fatal(item):
                    return
                stop.wait(ERROR_PAUSE)

    def _handle_item(self, item: _Item) -> None:
        self._credit.release()
        if self._closing:
            return                       # datagrams read just before close(): dropped
        if isinstance(item, list):
            self._deliver(item)
        elif _is_fatal(item):
            self._fatal(item)
        else:
            self._error_received(item)

    # -- delivery ------------------------------------------------------------------------------

    def _deliver(self, batch: List[Tuple[bytes, Address]]) -> None:
        for data, address in batch:
            if self._closing:            # the protocol closed the transport: no more
                return
            try:
                self._protocol.datagram_received(data, address)  # type: ignore[attr-defined]
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._report("Exception in datagram_received() of the protocol", exc)

    def _error_received(self, exc: BaseException) -> None:
        log.debug("%r: receive error %r; receiving goes on", self, exc)
        try:
            self._protocol.error_received(exc)  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as error:
            self._report("Exception in error_received() of the protocol", error)

    def _fatal(self, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            log.debug("%r: fatal receive error %r", self, exc)
        else:
            self._report("Fatal error receiving on an udpcap_ctypes transport", exc)
        self._shut(exc)

    def _report(self, message: str, exc: BaseException) -> None:
        self._loop.call_exception_handler({"message": message, "exception": exc,
                                           "transport": self, "protocol": self._protocol})

    # -- closing -------------------------------------------------------------------------------

    def _shut(self, exc: Optional[BaseException]) -> None:
        """Release everything now; connection_lost(*exc*) follows from the loop."""
        if self._closing:
            return
        self._closing = True
        self._release()
        if self._loop.is_closed():
            self._connection_lost(exc)
        else:
            self._loop.call_soon(self._connection_lost, exc)

    def _release(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._fd is not None:
            self._loop.remove_reader(self._fd)   # before close() closes the fd
            self._fd = None
        if self._readers is not None:
            self._readers.remove(self)           # before close() may close a capture
            self._readers = None
        sock, self._sock = self._sock, None
        self._stop.set()
        self._credit.release()           # a reader thread waiting for credit: let it see stop
        if sock is not None:
            try:
                sock.close()             # wakes a reader thread blocked in a receive
            except Exception:
                log.exception("%r: closing the socket failed", self)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("%r: the reader thread did not end within %.0f s of close(); "
                            "it ends when its receive returns", self, JOIN_TIMEOUT)

    def _connection_lost(self, exc: Optional[BaseException]) -> None:
        if self._lost:
            return
        self._lost = True
        _untrack(self._loop, self)
        try:
            self._protocol.connection_lost(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as error:
            self._report("Exception in connection_lost() of the protocol", error)

    def _loop_closing(self) -> None:
        """The loop is about to close: release now, and call connection_lost here, since the
        loop will not run the callback."""
        self._shut(None)
        self._connection_lost(None)


# -- the capture fds, once per loop --------------------------------------------------------------

class _CaptureReaders:
    """One ``add_reader`` per capture fd per loop, for every endpoint on the loop that reads
    that capture.  When a capture has frames, one of its endpoints receives
    (``_read_ready``): that read parses the batch once and queues every subscriber's
    datagrams, and the others' own fds (their queue pipes) become readable.  An endpoint that
    no longer reads the capture (its device went away) is dropped from the fd's list; an
    endpoint pausing after an error is skipped, and the fd is left alone while all are."""

    _by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _CaptureReaders]" = \
        weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _CaptureReaders:
        readers = cls._by_loop.get(loop)
        if readers is None:
            readers = cls._by_loop[loop] = cls(loop)
        return readers

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # fd -> [transport, ...], the first reads
        self._by_fd: Dict[int, List[UdpcapDatagramTransport]] = {}
        self._idle: Set[int] = set()    # fds unregistered while every endpoint pauses

    def add(self, transport: UdpcapDatagramTransport, fds: Set[int]) -> None:
        for fd in fds:
            transports = self._by_fd.get(fd)
            if transports is None:
                self._by_fd[fd] = [transport]
                self._loop.add_reader(fd, self._ready, fd)
            elif transport not in transports:
                transports.append(transport)

    def remove(self, transport: UdpcapDatagramTransport) -> None:
        for fd, transports in list(self._by_fd.items()):
            if transport in transports:
                transports.remove(transport)
                if not transports:
                    self._drop(fd)

    def resume(self, transport: UdpcapDatagramTransport) -> None:
        for fd in list(self._idle):
            if transport in self._by_fd.get(fd, ()):
                self._idle.discard(fd)
                self._loop.add_reader(fd, self._ready, fd)

    def _drop(self, fd: int) -> None:
        del self._by_fd[fd]
        if fd in self._idle:
            self._idle.discard(fd)
        else:
            self._loop.remove_reader(fd)

    def _ready(self, fd: int) -> None:
        transports = self._by_fd.get(fd)
        if transports is None:
            return
        for transport in list(transports):
            if fd not in transport._reads_fds():
                transports.remove(transport)        # it lost this capture
            elif transport._paused is None:
                transport._read_ready()
                return
        if not transports:
            self._drop(fd)
        else:                                       # every endpoint pauses: wait for them
            self._idle.add(fd)
            self._loop.remove_reader(fd)


# -- closing with the loop ---------------------------------------------------------------------
#
# asyncio has no hook for "the loop is closing", and the loop discards pending callbacks when
# it closes.  A transport left open would keep its socket (captures) and, on the thread path,
# a thread blocked in a receive for the rest of the process.  So the first transport on a loop
# wraps that loop object's close() (an attribute on the instance; the class is untouched):
# before the loop closes, every transport still open on it is closed and its protocol gets
# connection_lost(None).

# loop -> its transports that have not had connection_lost yet
_OPEN: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Set[UdpcapDatagramTransport]]" = \
    weakref.WeakKeyDictionary()
_OPEN_LOCK = threading.Lock()


def _track(loop: asyncio.AbstractEventLoop, transport: UdpcapDatagramTransport) -> None:
    with _OPEN_LOCK:
        try:
            transports = _OPEN.get(loop)
        except TypeError:                # a loop that takes no weak references
            log.debug("%r cannot be watched for close(): close the transports yourself", loop)
            return
        if transports is None:
            transports = _OPEN[loop] = set()
            if not _wrap_close(loop, transports):
                log.debug("%r cannot be watched for close(): close the transports yourself",
                          loop)
        transports.add(transport)


def _untrack(loop: asyncio.AbstractEventLoop, transport: UdpcapDatagramTransport) -> None:
    with _OPEN_LOCK:
        try:
            transports = _OPEN.get(loop)
        except TypeError:
            return
        if transports is not None:
            transports.discard(transport)


def _wrap_close(loop: asyncio.AbstractEventLoop,
                transports: Set[UdpcapDatagramTransport]) -> bool:
    original = loop.close

    def close() -> None:
        if not loop.is_running() and not loop.is_closed():
            for transport in list(transports):
                try:
                    transport._loop_closing()
                except Exception:
                    log.exception("closing %r with its event loop failed", transport)
        original()

    close.__doc__ = original.__doc__
    try:
        loop.close = close               # type: ignore[method-assign]
    except (AttributeError, TypeError):
        return False
    return True


# -- the endpoint ------------------------------------------------------------------------------

async def create_datagram_endpoint(
        protocol_factory: Callable[[], _ProtocolT],
        local_addr: Optional[Tuple[Host, int]] = None,
        sock: Optional[UdpcapSocket] = None,
        **options: Any) -> Tuple[UdpcapDatagramTransport, _ProtocolT]:
    """Receive datagrams on the running loop: ``(transport, protocol)``, as
    ``loop.create_datagram_endpoint`` returns them, for receiving only.

    Give ``local_addr=(host, port)`` to make and bind a new :class:`UdpcapSocket`, with
    *options* (``family=`` and the keyword options of ``UdpcapSocket()``); or ``sock=`` an
    UdpcapSocket of your own, bound already or bound here to *local_addr*.  The transport
    owns the socket once this call returns: it sets its timeout and closes it (if the call
    fails, a socket you passed stays open and yours).  Join and leave groups on
    ``transport.get_extra_info("socket")``.

    ``protocol_factory()`` makes the ``asyncio.DatagramProtocol``; its calls are described
    in :class:`UdpcapDatagramTransport`.  ``transport.close()`` stops receiving and releases
    the socket (and the reader thread, where one is used) before it returns;
    ``connection_lost(None)`` follows once.  Cancelling this call, or closing the loop with
    the transport open, releases everything too.

    Works on every stdlib event loop: selector loops wait on ``UdpcapSocket.fileno()`` with
    ``add_reader``; where there is no such fd (Windows) or no ``add_reader`` (the Proactor
    loop), a thread receives and hands batches to the loop.

    Binding opens the captures in the calling thread (and its network namespace), which
    blocks the loop for a few tens of milliseconds.  Raises what ``UdpcapSocket()`` and
    ``bind()`` raise, ``ValueError`` for a missing or conflicting address and ``TypeError``
    for a *sock* that is not an UdpcapSocket.
    """
    loop = asyncio.get_running_loop()
    own = sock is None
    if sock is not None:
        if not isinstance(sock, UdpcapSocket):
            raise TypeError("sock must be an udpcap_ctypes.UdpcapSocket, not %s (for a "
                            "socket.socket use loop.create_datagram_endpoint)"
                            % type(sock).__name__)
        if options:
            raise ValueError("the options %s are UdpcapSocket() options: with sock=, give "
                             "them to UdpcapSocket() instead" % ", ".join(sorted(options)))
        if sock.closed:
            raise SocketClosedError("sock is closed: pass an open UdpcapSocket")
        if local_addr is not None and sock.bound:
            raise ValueError("sock is already bound to %s:%d: give local_addr only with an "
                             "unbound socket" % sock.getsockname()[:2])
        if local_addr is None and not sock.bound:
            raise ValueError("sock is not bound: bind it first or give local_addr=(host, port)")
        if local_addr is not None:
            sock.bind(local_addr)
    else:
        if local_addr is None:
            raise ValueError("give local_addr=(host, port) to receive on, or sock=a bound "
                             "UdpcapSocket")
        sock = UdpcapSocket(**options)
        try:
            sock.bind(local_addr)
        except BaseException:
            sock.close()
            raise
    try:
        protocol = protocol_factory()
        waiter = loop.create_future()
        transport = UdpcapDatagramTransport(loop, sock, protocol, waiter)
    except BaseException:
        if own:
            sock.close()
        raise
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    return transport, protocol
