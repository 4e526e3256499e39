"""Process-wide settings that make keyveil faster on CPU (opt-in; the ``keyveil`` command uses them).

keyveil's batched kernels allocate temporaries of a few MB on every call.
With glibc's default ``malloc`` settings, freed memory at the top of the heap
is handed back to the operating system as soon as it exceeds a threshold that
adapts to the largest block freed so far, so the next call gets fresh pages
and pays one page fault per 4 KiB page: about 6 µs each on the 2-core VM the
benchmarks ran on, up to a third of VisualMixer's time at 32x32 (see
BENCHMARKS.md). :func:`tune_allocator` keeps that memory in the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["tune_allocator", "ENV_TUNE_ALLOCATOR"]

#: Set to ``0`` to keep glibc's defaults in the ``keyveil`` command.
ENV_TUNE_ALLOCATOR = "KEYVEIL_TUNE_ALLOCATOR"

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper limit on 64-bit systems


def tune_allocator(*, mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Let glibc's ``malloc`` keep freed memory for reuse instead of returning it at once.

    Blocks below ``mmap_threshold`` bytes come from the heap (not from a fresh
    ``mmap``), and up to ``trim_threshold`` bytes of free memory at the top of
    the heap stay with the process. This affects the whole process (it is
    what the ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
    environment variables do at start-up), so call it once, early, in a
    program you own; the ``keyveil`` command calls it unless
    ``KEYVEIL_TUNE_ALLOCATOR=0``. The cost: the process may hold up to
    ``trim_threshold`` bytes of freed memory.

    Returns:
        True if the settings were applied; False where ``malloc`` is not glibc's
        (macOS, Windows, musl), where there is nothing to do.

    Examples:
        >>> import keyveil.runtime
        >>> keyveil.runtime.tune_allocator() in (True, False)
        True
    """
    if not 0 < mmap_threshold <= _MMAP_THRESHOLD_MAX:
        raise ValueError(f"mmap_threshold must be in (0, {_MMAP_THRESHOLD_MAX}] bytes, got {mmap_threshold}")
    if trim_threshold <= 0:
        raise ValueError(f"trim_threshold must be positive, got {trim_threshold}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
    return bool(ok)


def tune_allocator_from_env() -> bool:
    """:func:`tune_allocator` unless the environment sets ``KEYVEIL_TUNE_ALLOCATOR=0``."""
    if os.environ.get(ENV_TUNE_ALLOCATOR, "1").strip() in ("0", "false", "no", "off"):
        return False
    return tune_allocator()
