"""The package ships ``py.typed``: its public API and pure modules must be annotated, and the
annotations must resolve.

For every public callable (``udpcap_ctypes.__all__``, and the public functions and classes of
the annotated private modules): ``typing.get_type_hints`` resolves -- on every supported
Python, so the annotations use ``typing.List``/``Optional``/... and not ``list[int]`` or
``int | None`` -- and every parameter and the return value are annotated.  Those modules use
``from __future__ import annotations``, so no annotation is evaluated at import or on the
receive path: every stored annotation is still text.
"""

import __future__

import inspect
import types
import typing

import pytest

import udpcap_ctypes
from udpcap_ctypes import (
    _asyncio,
    _net,
    _packet,
    _pcap,
    _reassembly,
    _stats,
    errors,
    udpcap_socket,
)

# The modules whose every public callable is annotated (and that postpone annotations).
ANNOTATED_MODULES = [udpcap_ctypes, udpcap_socket, errors, _packet, _reassembly, _stats, _net,
                     _asyncio]


def _own_functions(cls):
    """``(name, function)`` for the methods and property getters *cls* itself defines that
    are public: no leading underscore, or a dunder (``__init__``, ``__enter__``...).  What
    ``typing`` puts in a class (a TypedDict's ``__new__`` on 3.8) is not ours."""
    for name, member in vars(cls).items():
        if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
            continue
        if isinstance(member, property):
            member = member.fget
        elif isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, types.FunctionType) and member.__module__ == cls.__module__:
            yield name, member


def _public_of_module(module):
    """The public functions and classes *module* defines (not those it imports)."""
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and \
                obj.__module__ == module.__name__:
            yield name, obj


def _callables():
    """``{id: function}`` of everything that must be fully annotated."""
    found = {}

    def add_class(prefix, cls):
        for name, func in _own_functions(cls):
            found["%s.%s" % (prefix, name)] = func

    for name in udpcap_ctypes.__all__:
        obj = getattr(udpcap_ctypes, name)
        if inspect.isclass(obj):
            add_class("udpcap_ctypes.%s" % name, obj)
        elif callable(obj):
            found["udpcap_ctypes.%s" % name] = obj
    for module in ANNOTATED_MODULES[1:]:
        short = module.__name__.rpartition(".")[2]
        for name, obj in _public_of_module(module):
            if inspect.isclass(obj):
                add_class("%s.%s" % (short, name), obj)
            else:
                found["%s.%s" % (short, name)] = obj
    # The functions the factories return run on every frame: annotated as well.
    for linktype in (_pcap.DLT_EN10MB, _pcap.DLT_NULL, _pcap.DLT_LINUX_SLL):
        found["_packet.make_link_parser(%d)" % linktype] = _packet.make_link_parser(linktype)
        found["_packet.make_batch_parser(%d)" % linktype] = _packet.make_batch_parser(linktype)
    return found


CALLABLES = _callables()


def missing_annotations(func):
    """Names of *func*'s parameters (``self``/``cls`` aside) and ``"return"`` that have no
    annotation.  ``typing.get_type_hints`` must resolve them (it raises otherwise)."""
    hints = typing.get_type_hints(func)
    params = list(inspect.signature(func).parameters)
    if params and params[0] in ("self", "cls") and "." in func.__qualname__:
        params = params[1:]
    return [name for name in params + ["return"] if name not in hints]


def _overloads(func):
    """The ``@overload`` signatures of *func* (Python 3.11+ keeps them; else none)."""
    get_overloads = getattr(typing, "get_overloads", None)
    return get_overloads(func) if get_overloads is not None else []


def test_the_public_api_is_collected():
    """The collection above finds what it is meant to (so the checks below check something)."""
    for expected in ("udpcap_ctypes.UdpcapSocket.__init__", "udpcap_ctypes.UdpcapSocket.recvfrom",
                     "udpcap_ctypes.UdpcapSocket.recvfrom_into",
                     "udpcap_ctypes.UdpcapSocket.recv_into", "udpcap_ctypes.UdpcapSocket.recv",
                     "udpcap_ctypes.UdpcapSocket.statistics", "udpcap_ctypes.UdpcapSocket.bound",
                     "udpcap_ctypes.UdpcapSocket.__exit__", "udpcap_ctypes.NotBoundError.__init__",
                     "udpcap_socket.Options.__init__", "_packet.parse_ipv4",
                     "_packet.make_batch_parser", "_reassembly.Reassembler.add",
                     "_stats.Statistics.snapshot", "_stats.percentile", "_net.free_udp_port"):
        assert expected in CALLABLES, sorted(CALLABLES)


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_every_parameter_and_return_is_annotated(name):
    func = CALLABLES[name]
    assert missing_annotations(func) == [], "%s lacks annotations" % name
    for overload in _overloads(func):
        assert missing_annotations(overload) == [], "an overload of %s lacks annotations" % name


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_no_return_type_users_see_is_any(name):
    assert typing.get_type_hints(CALLABLES[name]).get("return") is not typing.Any, name


def test_the_check_catches_a_missing_annotation():
    def partly(self, a: int, b) -> int:
        return a

    def no_return(a: int):
        return a

    def unresolvable(a: "NoSuchName") -> None:  # noqa: F821
        pass

    assert missing_annotations(partly) == ["b"]
    assert missing_annotations(no_return) == ["return"]
    with pytest.raises(NameError):
        missing_annotations(unresolvable)


def _unevaluated(annotations):
    """True when every annotation is still text (a TypedDict keeps it as a ForwardRef)."""
    return all(isinstance(v, (str, typing.ForwardRef)) for v in annotations.values())


@pytest.mark.parametrize("module", ANNOTATED_MODULES, ids=lambda m: m.__name__)
def test_annotations_are_postponed(module):
    """``from __future__ import annotations``: annotations stay strings, never evaluated."""
    assert getattr(module, "annotations", None) is __future__.annotations, module.__name__
    flag = __future__.annotations.compiler_flag
    functions = [obj for obj in vars(module).values() if inspect.isfunction(obj)
                 and obj.__module__ == module.__name__]
    for cls in [obj for obj in vars(module).values() if inspect.isclass(obj)
                and obj.__module__ == module.__name__]:
        members = [m.__func__ if isinstance(m, (staticmethod, classmethod)) else m
                   for m in vars(cls).values()]
        functions += [f for f in members if isinstance(f, types.FunctionType)
                      and f.__module__ == module.__name__]
        functions += [p.fget for p in vars(cls).values() if isinstance(p, property)]
        assert _unevaluated(vars(cls).get("__annotations__", {})), cls.__qualname__
    for func in functions:
        assert func.__code__.co_flags & flag, func.__qualname__
        assert _unevaluated(func.__annotations__), func.__qualname__
    assert _unevaluated(vars(module).get("__annotations__", {})), module.__name__


def test_the_receive_path_is_annotated_as_the_contract_says():
    """docs/API.md: recvfrom gives (bytes, address), recvfrom_into (count, address), the
    address (host, port) for AF_INET and (host, port, flowinfo, scope_id) for AF_INET6."""
    hints = typing.get_type_hints
    sock = udpcap_ctypes.UdpcapSocket
    assert hints(sock.recv)["return"] is bytes
    assert hints(sock.recv_into)["return"] is int
    address = typing.Union[typing.Tuple[str, int], typing.Tuple[str, int, int, int]]
    assert hints(sock.recvfrom_into)["return"] == typing.Tuple[int, address]
    # recvfrom(0) is (b"", None): the implementation says so; the overloads split it.
    assert hints(sock.recvfrom)["return"] == typing.Tuple[bytes, typing.Optional[address]]
    returns = {hints(o)["return"] for o in _overloads(sock.recvfrom)}
    assert not returns or returns == {typing.Tuple[bytes, None], typing.Tuple[bytes, address]}
    for method in (sock.recvfrom_into, sock.recv_into):
        buffer = hints(method)["buffer"]
        assert {bytearray, memoryview} <= set(typing.get_args(buffer)), buffer


def test_statistics_snapshot_type_matches_the_counters():
    """``statistics()`` is typed as a TypedDict: its keys and value types are the real ones."""
    hints = typing.get_type_hints(_stats.StatisticsSnapshot)
    snapshot = _stats.Statistics().snapshot()
    assert set(hints) == set(snapshot)
    for key, value in snapshot.items():
        expected = typing.get_origin(hints[key]) or hints[key]
        assert isinstance(value, expected), (key, value, hints[key])
    assert typing.get_type_hints(udpcap_ctypes.UdpcapSocket.statistics)["return"] is \
        _stats.StatisticsSnapshot


def test_options_attributes_are_declared():
    hints = typing.get_type_hints(udpcap_socket.Options)
    assert set(hints) == set(udpcap_socket.Options.__slots__)
    options = udpcap_socket.Options()
    for name, hint in hints.items():
        allowed = typing.get_args(hint) or (hint,)
        assert isinstance(getattr(options, name), allowed), (name, hint)
