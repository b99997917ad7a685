"""Loads the compiled CPU kernels (pyrnn._C) with one clear error when they are missing or broken."""

from __future__ import annotations

_IMPORT_ERROR: BaseException | None = None

try:
    from . import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the reliability tests in a subprocess
    _C = None
    _IMPORT_ERROR = exc

BUILD_HINT = (
    "pyrnn's compiled CPU kernels (pyrnn._C) could not be loaded. Build them from the source tree with "
    "`pip install -e .` (needs a C++17 compiler and CMake; no CUDA, no torch headers)."
)


def cpu_kernels():
    """The pyrnn._C module, or an ImportError that says how to build it."""
    if _C is None:
        raise ImportError(f"{BUILD_HINT} Original error: {_IMPORT_ERROR}") from _IMPORT_ERROR
    return _C
