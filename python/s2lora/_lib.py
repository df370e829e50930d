"""libs2lora.so through ctypes: where it is found, and its C API (runtime/api/s2lora.h) declared.

The structs mirror the header field for field (tests/test_layout.py compiles a C program against
the header and compares every size and offset); DECLARATIONS gives every function of the header
its restype and argtypes (the same test checks that the header declares no function missing
here, with the same number of parameters).
"""
import ctypes
import ctypes.util
import os
import sys
import threading

from . import errors

# The header this package was written against (s2lora.h's S2LORA_VERSION_*): the library's
# major version must agree (the ABI changes only with the major version).
HEADER_VERSION = (0, 2, 0)
LIBRARY_NAME = "libs2lora.so"
ENV_LIBRARY = "S2LORA_LIBRARY"

c_int64 = ctypes.c_int64
c_void_p = ctypes.c_void_p


class Options(ctypes.Structure):
    """struct s2lora_options."""
    _fields_ = [
        ("cache_dir", ctypes.c_char_p),
        ("tune_db", ctypes.c_char_p),
        ("use_tuned", ctypes.c_int),
        ("build_threads", ctypes.c_int),
    ]


class SpecInfoStruct(ctypes.Structure):
    """struct s2lora_spec_info."""
    _fields_ = [
        ("name", ctypes.c_char * 128),
        ("context_length", ctypes.c_int),
        ("group_size", ctypes.c_int),
        ("shift", ctypes.c_int),
        ("shift_mode", ctypes.c_int),
        ("num_heads", ctypes.c_int),
        ("num_kv_heads", ctypes.c_int),
        ("head_dim", ctypes.c_int),
        ("dtype", ctypes.c_int),
        ("softmax_scale", ctypes.c_float),
        ("hidden_size", ctypes.c_int),
        ("intermediate_size", ctypes.c_int),
        ("num_layers", ctypes.c_int),
        ("vocab_size", ctypes.c_int),
        ("lora_rank", ctypes.c_int),
        ("lora_alpha", ctypes.c_float),
        ("hash", ctypes.c_char * 65),
    ]


class AttnArgs(ctypes.Structure):
    """struct s2lora_attn_args: T tokens in B sequences; strides in elements, 0 = packed."""
    _fields_ = [
        ("tokens", ctypes.c_int),
        ("batch", ctypes.c_int),
        ("cu_seqlens", ctypes.POINTER(ctypes.c_int32)),
        ("cu_seqlens_host", ctypes.POINTER(ctypes.c_int32)),
        ("max_seqlen", ctypes.c_int),
        ("q", c_void_p),
        ("k", c_void_p),
        ("v", c_void_p),
        ("o", c_void_p),
        ("lse", ctypes.POINTER(ctypes.c_float)),
        ("q_stride_token", c_int64), ("q_stride_head", c_int64),
        ("k_stride_token", c_int64), ("k_stride_head", c_int64),
        ("v_stride_token", c_int64), ("v_stride_head", c_int64),
        ("o_stride_token", c_int64), ("o_stride_head", c_int64),
    ]


class AttnGrads(ctypes.Structure):
    """struct s2lora_attn_grads."""
    _fields_ = [
        ("dout", c_void_p),
        ("dq", c_void_p),
        ("dk", c_void_p),
        ("dv", c_void_p),
        ("workspace", c_void_p),
        ("workspace_bytes", ctypes.c_size_t),
        ("dout_stride_token", c_int64), ("dout_stride_head", c_int64),
        ("dq_stride_token", c_int64), ("dq_stride_head", c_int64),
        ("dk_stride_token", c_int64), ("dk_stride_head", c_int64),
        ("dv_stride_token", c_int64), ("dv_stride_head", c_int64),
    ]


class LoraShape(ctypes.Structure):
    """struct s2lora_lora_shape."""
    _fields_ = [
        ("tokens", ctypes.c_int),
        ("in_", ctypes.c_int),  # `in` in C; a keyword in Python
        ("n_proj", ctypes.c_int),
        ("out", ctypes.c_int * 3),
        ("rank", ctypes.c_int),
        ("alpha", ctypes.c_float),
        ("dtype", ctypes.c_int),
        ("dropout", ctypes.c_float),
        ("seed", ctypes.c_uint64),
        ("layer", ctypes.c_int),
        ("grad_f32", ctypes.c_int),
        ("grad_beta", ctypes.c_float),
    ]


# The structs by their C names, for the layout test; "in_" is C's "in".
STRUCTS = {
    "s2lora_options": Options,
    "s2lora_spec_info": SpecInfoStruct,
    "s2lora_attn_args": AttnArgs,
    "s2lora_attn_grads": AttnGrads,
    "s2lora_lora_shape": LoraShape,
}
C_FIELD_NAMES = {"in_": "in"}

_P = ctypes.POINTER
_status = ctypes.c_int  # s2lora_status: an enum, int-sized
_handle = c_void_p      # s2lora_ctx *, s2lora_spec *, s2lora_attn *, s2lora_lora *
_strs = _P(ctypes.c_char_p)

# name -> (restype, argtypes), in the header's order.
DECLARATIONS = {
    "s2lora_version": (ctypes.c_char_p, []),
    "s2lora_version_number": (ctypes.c_int, []),
    "s2lora_status_string": (ctypes.c_char_p, [_status]),
    "s2lora_open": (_status, [_P(_handle), ctypes.c_int, _P(Options)]),
    "s2lora_close": (None, [_handle]),
    "s2lora_set_use_cache": (_status, [_handle, ctypes.c_int]),
    "s2lora_errmsg": (ctypes.c_char_p, [_handle]),
    "s2lora_device_name": (ctypes.c_char_p, [_handle]),
    "s2lora_device_arch": (ctypes.c_char_p, [_handle]),
    "s2lora_spec_load": (_status, [_handle, ctypes.c_char_p, _strs, ctypes.c_int, _P(_handle)]),
    "s2lora_spec_parse": (_status, [_handle, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                    _strs, ctypes.c_int, _P(_handle)]),
    "s2lora_spec_free": (None, [_handle]),
    "s2lora_spec_get_info": (_status, [_handle, _P(SpecInfoStruct)]),
    "s2lora_build": (_status, [_handle, _handle, _P(ctypes.c_int), _P(ctypes.c_int)]),
    "s2lora_tune": (_status, [_handle, _handle, ctypes.c_int, _P(ctypes.c_double)]),
    "s2lora_attn_create": (_status, [_handle, _handle, _P(_handle)]),
    "s2lora_attn_create_tile": (_status, [_handle, _handle, ctypes.c_char_p, _P(_handle)]),
    "s2lora_attn_free": (None, [_handle]),
    "s2lora_attn_forward": (_status, [_handle, _P(AttnArgs), c_void_p]),
    "s2lora_attn_workspace_bytes": (ctypes.c_size_t, [_handle, ctypes.c_int]),
    "s2lora_attn_backward": (_status, [_handle, _P(AttnArgs), _P(AttnGrads), c_void_p]),
    "s2lora_lora_rp": (ctypes.c_int, [ctypes.c_int, ctypes.c_int]),
    "s2lora_lora_create": (_status, [_handle, _P(LoraShape), _P(_handle)]),
    "s2lora_lora_free": (None, [_handle]),
    "s2lora_lora_workspace_bytes": (ctypes.c_size_t, [_handle]),
    "s2lora_lora_pack_weights": (_status, [_handle, c_void_p, c_void_p, c_void_p, c_void_p,
                                           c_void_p]),
    "s2lora_lora_forward": (_status, [_handle, c_void_p, c_void_p, c_void_p, c_void_p,
                                      c_void_p]),
    "s2lora_lora_backward": (_status, [_handle, c_void_p, c_void_p, c_void_p, c_void_p,
                                       c_void_p, c_void_p, c_void_p, c_void_p]),
    "s2lora_warnings": (ctypes.c_char_p, [_handle]),
    "s2lora_device_alloc": (_status, [_handle, ctypes.c_size_t, _P(c_void_p)]),
    "s2lora_device_free": (None, [_handle, c_void_p]),
    "s2lora_memcpy_to_device": (_status, [_handle, c_void_p, c_void_p, ctypes.c_size_t]),
    "s2lora_memcpy_to_host": (_status, [_handle, c_void_p, c_void_p, ctypes.c_size_t]),
    "s2lora_synchronize": (_status, [_handle, c_void_p]),
    "s2lora_attn_create_seqlen": (_status, [_handle, _handle, ctypes.c_int, _P(_handle)]),
    "s2lora_attn_tile": (ctypes.c_char_p, [_handle]),
    "s2lora_attn_check_args": (_status, [_handle, _P(AttnArgs), _P(AttnGrads)]),
}


def declare(lib):
    """Sets restype and argtypes of every function of the header on a loaded library; a
    library that lacks one is refused with the names it lacks."""
    missing = [name for name in DECLARATIONS if not hasattr(lib, name)]
    if missing:
        raise errors.LibraryVersionError(
            f"{getattr(lib, '_name', 'the library')} lacks {', '.join(missing)} of s2lora.h "
            f"{'.'.join(map(str, HEADER_VERSION))}: an older or partial build of libs2lora")
    for name, (restype, argtypes) in DECLARATIONS.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


# ----------------------------------------------------------------------------- finding it

def _package_dir():
    return os.path.dirname(os.path.abspath(__file__))


def candidates(environ=None, package_dir=None, prefixes=None):
    """The places looked at, in order, as (description, path or soname) pairs, when
    S2LORA_LIBRARY is not set: next to the package (a wheel may bundle the library), the
    source tree's build/ when the package runs from a checkout (PYTHONPATH=python), what
    ctypes.util.find_library finds, each LD_LIBRARY_PATH directory, and the lib/ of the
    install prefixes (sys.prefix, /usr/local)."""
    environ = os.environ if environ is None else environ
    package_dir = _package_dir() if package_dir is None else package_dir
    if prefixes is None:
        prefixes = [sys.prefix, "/usr/local"]
    out = [("next to the package", os.path.join(package_dir, LIBRARY_NAME)),
           ("the source tree's build/",
            os.path.normpath(os.path.join(package_dir, "..", "..", "build", LIBRARY_NAME)))]
    found = ctypes.util.find_library("s2lora")
    out.append(("ctypes.util.find_library('s2lora')", found))
    for d in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if d:
            out.append(("LD_LIBRARY_PATH", os.path.join(d, LIBRARY_NAME)))
    seen = set()
    for p in prefixes:
        path = os.path.join(p, "lib", LIBRARY_NAME)
        if path not in seen:
            seen.add(path)
            out.append((f"the install prefix {p}", path))
    return out


def _try_load(path):
    """(CDLL, None) or (None, why)."""
    try:
        return ctypes.CDLL(path), None
    except OSError as e:
        return None, str(e)


def find_and_load(environ=None, package_dir=None, prefixes=None):
    """Loads libs2lora: $S2LORA_LIBRARY when set (then only it: a path that does not load is an
    error, never a silent fall-back to another copy), else the first of candidates() that
    loads. Raises LibraryNotFoundError naming every place tried and why each failed, or
    LibraryVersionError when the library's major version is not this package's. Returns
    (CDLL, path)."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(ENV_LIBRARY)
    if explicit is not None:
        if not explicit:
            raise errors.LibraryNotFoundError(f"{ENV_LIBRARY} is set but empty: set it to the "
                                              f"path of {LIBRARY_NAME}, or unset it")
        if not os.path.exists(explicit):
            raise errors.LibraryNotFoundError(
                f"{ENV_LIBRARY}={explicit}: no such file (point it at a built or installed "
                f"{LIBRARY_NAME}, or unset it to search the usual places)")
        lib, why = _try_load(explicit)
        if lib is None:
            raise errors.LibraryNotFoundError(f"{ENV_LIBRARY}={explicit}: cannot load: {why}")
        return _checked(lib, explicit), explicit
    tried = []
    for what, path in candidates(environ, package_dir, prefixes):
        if not path:
            tried.append(f"  {what}: nothing found")
            continue
        if os.sep in path and not os.path.exists(path):
            tried.append(f"  {what}: {path}: no such file")
            continue
        lib, why = _try_load(path)
        if lib is None:
            tried.append(f"  {what}: {path}: {why}")
            continue
        return _checked(lib, path), path
    raise errors.LibraryNotFoundError(
        f"{LIBRARY_NAME} not found. Set {ENV_LIBRARY} to its path, or install it where one of "
        f"these finds it. Tried, in order:\n" + "\n".join(tried))


def _checked(lib, path):
    try:
        number = lib.s2lora_version_number
    except AttributeError:
        raise errors.LibraryVersionError(f"{path} is not libs2lora: it has no "
                                         f"s2lora_version_number") from None
    number.restype, number.argtypes = ctypes.c_int, []
    v = number()
    major = v // 1000000
    if major != HEADER_VERSION[0]:
        raise errors.LibraryVersionError(
            f"{path} is libs2lora {major}.{v // 1000 % 1000}.{v % 1000}; this package was written "
            f"for s2lora.h {'.'.join(map(str, HEADER_VERSION))} and needs major version "
            f"{HEADER_VERSION[0]} (the ABI changes with the major version)")
    lib._name = path
    return declare(lib)


_lock = threading.Lock()
_loaded = None


def lib():
    """The loaded, declared library (loaded once per process)."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = find_and_load()
        return _loaded[0]


def library_path():
    """The path the library was loaded from (loads it first)."""
    lib()
    return _loaded[1]


def version():
    """The library's version string ("0.2.0")."""
    return lib().s2lora_version().decode()


def status_string(status):
    return lib().s2lora_status_string(status).decode()
