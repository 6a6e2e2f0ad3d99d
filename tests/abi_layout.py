"""A small, pure-Python C struct layout calculator for the tests.

It takes the layout *data* of ``udpcap_ctypes._structs.struct_specs(family)`` (``{struct: [(field,
c_type), ...]}``) and an ABI table (size and alignment of every scalar C type name used there) and
computes what a C compiler computes for ordinary (non-packed, no bit-field) structs:

* every member is placed at the next offset that is a multiple of its alignment;
* an array ``T[n]`` has the alignment of ``T`` and ``n`` times its size;
* an embedded struct has the alignment of its most aligned member;
* the struct's size is rounded up to its alignment (tail padding).

The test suite proves the calculator twice: against ``ctypes`` on this host (which implements the
same rules) and against real C compilers (gcc, and the mingw-w64 cross compilers for Windows) with
``_Static_assert``.  That is how a Linux machine proves the Windows ABI of the ctypes declarations.
"""

# size, alignment of each scalar C type name of _structs.py, per ABI.
ABIS = {
    # Windows x64 (LLP64): long stays 32-bit, pointers are 64-bit.  time_t is 64-bit in the
    # MSVC/mingw-w64 runtimes; Windows' struct timeval does not use it (it is two longs).
    "win64": {
        "u_int": (4, 4), "int": (4, 4), "bpf_u_int32": (4, 4), "long": (4, 4),
        "time_t": (8, 8), "suseconds_t": (4, 4), "u_short": (2, 2), "u_char": (1, 1),
        "ptr": (8, 8), "u_int64": (8, 8),
    },
    # Windows x86 (ILP32).  The MS ABI aligns 64-bit members (time_t, ULONGLONG) to 8 inside
    # structs -- the i386 SysV ABI would align them to 4.
    "win32": {
        "u_int": (4, 4), "int": (4, 4), "bpf_u_int32": (4, 4), "long": (4, 4),
        "time_t": (8, 8), "suseconds_t": (4, 4), "u_short": (2, 2), "u_char": (1, 1),
        "ptr": (4, 4), "u_int64": (8, 8),
    },
    # Linux x86_64 / aarch64 (LP64, glibc): long, time_t, suseconds_t and pointers are 64-bit.
    "linux64": {
        "u_int": (4, 4), "int": (4, 4), "bpf_u_int32": (4, 4), "long": (8, 8),
        "time_t": (8, 8), "suseconds_t": (8, 8), "u_short": (2, 2), "u_char": (1, 1),
        "ptr": (8, 8), "u_int64": (8, 8),
    },
}


class Layout:
    """The computed layout of one struct."""

    def __init__(self, name, size, align, offsets, field_sizes):
        self.name = name
        self.size = size
        self.align = align
        self.offsets = offsets            # {field: byte offset}, in declaration order
        self.field_sizes = field_sizes    # {field: sizeof(member)}

    def __repr__(self):
        return "<Layout %s size=%d align=%d %r>" % (self.name, self.size, self.align,
                                                    self.offsets)


def _round_up(value, align):
    return (value + align - 1) // align * align


def _type_info(c_type, specs, scalars, done, stack):
    """(size, align) of a field type: scalar, ``T[n]`` array or embedded struct name."""
    c_type = c_type.strip()
    if c_type.endswith("]"):
        base, _, count = c_type[:-1].partition("[")
        count = int(count)
        if count <= 0:
            raise ValueError("array %r must have a positive length" % c_type)
        size, align = _type_info(base, specs, scalars, done, stack)
        return size * count, align
    if c_type in scalars:
        return scalars[c_type]
    if c_type in specs:
        layout = _struct_layout(c_type, specs, scalars, done, stack)
        return layout.size, layout.align
    raise KeyError("unknown C type %r (not in the ABI table nor a struct of the spec)" % c_type)


def _struct_layout(name, specs, scalars, done, stack):
    if name in done:
        return done[name]
    if name in stack:
        raise ValueError("struct %s embeds itself by value" % name)
    stack.append(name)
    offset = 0
    align = 1
    offsets = {}
    field_sizes = {}
    for field, c_type in specs[name]:
        if field in offsets:
            raise ValueError("struct %s declares %s twice" % (name, field))
        size, field_align = _type_info(c_type, specs, scalars, done, stack)
        offset = _round_up(offset, field_align)
        offsets[field] = offset
        field_sizes[field] = size
        offset += size
        align = max(align, field_align)
    stack.pop()
    layout = Layout(name, _round_up(offset, align), align, offsets, field_sizes)
    done[name] = layout
    return layout


def compute_layouts(specs, abi):
    """``{struct_name: Layout}`` for every struct of *specs* under *abi* (a key of ABIS or a
    ``{c_type: (size, align)}`` table)."""
    scalars = ABIS[abi] if isinstance(abi, str) else abi
    done = {}
    for name in specs:
        _struct_layout(name, specs, scalars, done, [])
    return done
