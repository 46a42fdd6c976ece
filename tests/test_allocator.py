"""The allocator bounds: applied on glibc unless the user's environment sets them."""

from __future__ import annotations

import platform

import pytest

from shelf_stream.allocator import CLIENT_ARENAS, CLIENT_MMAP_THRESHOLD, bound_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_bounds_apply_unless_the_environment_sets_them() -> None:
    client = (CLIENT_ARENAS, CLIENT_MMAP_THRESHOLD)
    assert bound_allocator(*client, env={}) == {
        "MALLOC_ARENA_MAX": 2, "MALLOC_MMAP_THRESHOLD_": 131072
    }  # fmt: skip
    mine = {"MALLOC_ARENA_MAX": "4"}
    assert bound_allocator(*client, env=mine) == {"MALLOC_MMAP_THRESHOLD_": 131072}
    everything = {"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "65536"}
    assert bound_allocator(*client, env=everything) == {}
    assert bound_allocator(None, None, env={}) == {}
