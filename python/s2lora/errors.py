"""The exceptions s2lora raises, one class per s2lora_status (runtime/api/s2lora.h).

Every exception derives from S2loraError, which carries the library's status code (`.status`,
an int; None where no library call failed, e.g. a library that could not be found) and its
message (`.message`: for a library failure, the s2lora_errmsg text, which names where — spec
file:line:column, tensor, shape — and what would be valid). Bad arguments are also ValueErrors
(InvalidArgumentError, SpecError), so `except ValueError` catches them as Python code expects.
Checks made in Python before any library call raise the same classes with the status the
library would have returned (S2LORA_ERR_INVALID for an argument).
"""

# Status codes, as in s2lora.h's enum s2lora_status (tests/test_layout.py checks them against
# the header).
OK = 0
ERR_IO = 1
ERR_PARSE = 2
ERR_SPEC = 3
ERR_INVALID = 4
ERR_NOMEM = 5
ERR_BUILD = 6
ERR_CACHE = 7
ERR_CUDA = 8
ERR_NO_DEVICE = 9
ERR_UNSUPPORTED = 10

STATUS_NAMES = {
    OK: "S2LORA_OK",
    ERR_IO: "S2LORA_ERR_IO",
    ERR_PARSE: "S2LORA_ERR_PARSE",
    ERR_SPEC: "S2LORA_ERR_SPEC",
    ERR_INVALID: "S2LORA_ERR_INVALID",
    ERR_NOMEM: "S2LORA_ERR_NOMEM",
    ERR_BUILD: "S2LORA_ERR_BUILD",
    ERR_CACHE: "S2LORA_ERR_CACHE",
    ERR_CUDA: "S2LORA_ERR_CUDA",
    ERR_NO_DEVICE: "S2LORA_ERR_NO_DEVICE",
    ERR_UNSUPPORTED: "S2LORA_ERR_UNSUPPORTED",
}


class S2loraError(Exception):
    """A failure of s2lora: `.status` (int or None) and `.message` (str)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def status_name(self):
        """"S2LORA_ERR_SPEC" and so on; None when no status applies."""
        if self.status is None:
            return None
        return STATUS_NAMES.get(self.status, f"status {self.status}")

    def __str__(self):
        if self.status is None:
            return self.message
        return f"{self.message} [{self.status_name}]"


class LibraryNotFoundError(S2loraError, OSError):
    """libs2lora.so could not be found or loaded; the message lists every place tried."""


class LibraryVersionError(S2loraError, OSError):
    """The library found is of another major version than this package was written for."""


class S2loraIOError(S2loraError, OSError):
    """S2LORA_ERR_IO: a file could not be read or written."""


class ParseError(S2loraError, ValueError):
    """S2LORA_ERR_PARSE: a file or string is not what its format says (YAML, JSON)."""


class SpecError(S2loraError, ValueError):
    """S2LORA_ERR_SPEC: valid YAML, but not a valid s2lora spec (a key, a value, a range)."""


class InvalidArgumentError(S2loraError, ValueError):
    """S2LORA_ERR_INVALID: a bad argument (shape, stride, pointer, dtype, device, option)."""


class S2loraMemoryError(S2loraError, MemoryError):
    """S2LORA_ERR_NOMEM."""


class BuildError(S2loraError, RuntimeError):
    """S2LORA_ERR_BUILD: NVRTC refused a generated unit (a bug in s2lora: please report it)."""


class CacheError(S2loraError, RuntimeError):
    """S2LORA_ERR_CACHE: the kernel cache could not be used."""


class CudaError(S2loraError, RuntimeError):
    """S2LORA_ERR_CUDA: a CUDA call failed (the message names it)."""


class NoDeviceError(S2loraError, RuntimeError):
    """S2LORA_ERR_NO_DEVICE: no CUDA device or driver, or the device number is out of range."""


class UnsupportedError(S2loraError, RuntimeError):
    """S2LORA_ERR_UNSUPPORTED: valid, but not on this device or in this build."""


_BY_STATUS = {
    ERR_IO: S2loraIOError,
    ERR_PARSE: ParseError,
    ERR_SPEC: SpecError,
    ERR_INVALID: InvalidArgumentError,
    ERR_NOMEM: S2loraMemoryError,
    ERR_BUILD: BuildError,
    ERR_CACHE: CacheError,
    ERR_CUDA: CudaError,
    ERR_NO_DEVICE: NoDeviceError,
    ERR_UNSUPPORTED: UnsupportedError,
}


def error_for_status(status, message):
    """The exception for a failed call's status and message (an unknown status: S2loraError)."""
    cls = _BY_STATUS.get(status, S2loraError)
    if not message:
        message = f"s2lora call failed with {STATUS_NAMES.get(status, f'status {status}')}"
    return cls(message, status)
