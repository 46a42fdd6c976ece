"""Keep glibc's allocator from holding on to memory a video process no longer uses.

Video processes run many threads (the client: capture, encoder and its pool, file
decoding, the sinks; the server: a decoder per stream), and glibc gives threads their
own malloc arenas (up to 8 per core). Memory freed in an arena stays mapped in it, and
glibc's dynamic mmap threshold makes it worse: once a large block (a decoded picture, a
letterboxed 416x416 float image of 2 MiB) is freed, blocks up to that size come from
the arenas instead of their own mappings, where they fragment and are kept. Three
remedies, through ``mallopt``/``malloc_trim`` (ctypes; elsewhere than glibc they do
nothing):

* ``bound_allocator(arenas, mmap_threshold)``: at most ``arenas`` arenas from now on,
  and a fixed mmap threshold: blocks from ``mmap_threshold`` bytes up get their own
  mapping, returned to the system when freed (glibc keeps the threshold fixed once it
  is set). The CLI applies the client's bounds first thing, before any thread starts
  (a user's own ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` wins); the server
  applies its own (``ServerConfig``) when it starts;
* ``trim()``: ``malloc_trim(0)`` hands the free pages of every arena back (madvise). It
  locks each arena in turn, so the server runs it on a worker thread, after streams
  close, at most once per ``TRIM_INTERVAL_S``.

Measured:
- server: 96 streams of 1280x720 (8 at a time) opened and closed beside a resident one,
  RSS after minus before, three runs each: glibc's defaults +59 to +183 MiB; 2 arenas and
  a 256 KiB threshold +14 to +22; 2 arenas and 64 KiB (the server's default) +1.2 to
  +5.5 MiB, with the peak 192 instead of 220 MiB, and no measurable cost per frame
  (decoding and letterboxing 1280x720 took 5.5 ms either way). ``shelf-bench fuzz``
  reports RSS before, at the peak of and after its targeted cases;
- client: two ``shelf-stream send --save --results`` of the same looped clip side by
  side for 4 minutes (640x360 at 15 fps): 141-173 MB with glibc's defaults, 141-158 MB
  with 2 arenas and a 128 KiB threshold (``CLIENT_ARENAS``, ``CLIENT_MMAP_THRESHOLD``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Mapping
from functools import cache
from typing import Any

log = logging.getLogger("shelf_stream")

#: mallopt parameter numbers (glibc malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: The server trims at most this often (seconds).
TRIM_INTERVAL_S = 1.0
#: The client's bounds (the server's are in ``ServerConfig``).
CLIENT_ARENAS = 2
CLIENT_MMAP_THRESHOLD = 128 * 1024
#: The environment variables through which a user sets these bounds himself.
_ENV_VARS = {_M_ARENA_MAX: "MALLOC_ARENA_MAX", _M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_"}


@cache
def _glibc() -> Any | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):
        return None
    return libc


def bound_allocator(
    arenas: int | None, mmap_threshold: int | None, *, env: Mapping[str, str] | None = None
) -> dict[str, int]:
    """At most ``arenas`` malloc arenas from now on, and blocks of ``mmap_threshold``
    bytes and more in their own mappings (None leaves glibc's default; so does the
    bound's own variable in ``env``, default ``os.environ``). Returns what was set, by
    its variable's name: nothing where this is not glibc."""
    libc = _glibc()
    if libc is None:
        return {}
    env = os.environ if env is None else env
    applied = {}
    for parameter, value in ((_M_ARENA_MAX, arenas), (_M_MMAP_THRESHOLD, mmap_threshold)):
        name = _ENV_VARS[parameter]
        if value is None or name in env:
            continue
        if libc.mallopt(parameter, value):
            applied[name] = value
        else:
            log.warning("glibc refused mallopt(%d, %d); memory may stay high", parameter, value)
    return applied


def trim() -> bool:
    """Return free heap pages of every arena to the system; True if any were."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def rss_bytes() -> int | None:
    """This process's resident set size (Linux), for reports."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")
