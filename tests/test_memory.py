"""geofg.memory: freed heap pages go back to the OS between units on glibc, and can be turned off."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = """
import numpy as np
from geofg.memory import trim_heap
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 // 2**20
warm = np.ones(1 << 20); del warm  # an 8 MiB free raises glibc's mmap threshold past 1 MiB
# many mid-sized buffers: glibc keeps them in the heap after free (below the mmap threshold)
bufs = [np.ones(1 << 17) for _ in range(1500)]  # 1 MiB each, ~1.5 GiB
del bufs[:-1]
before = rss()
ok = trim_heap()
print(ok, before, rss())
"""


def _run(env: dict[str, str]) -> list[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GEOFG_MALLOC"))}
    out = subprocess.run([sys.executable, "-c", CODE], env={**base, **env}, capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_trim_returns_freed_heap_pages() -> None:
    ok, before, after = _run({})
    assert ok == "True"
    assert int(before) - int(after) > 500, (before, after)  # MiB handed back


def test_trim_can_be_turned_off() -> None:
    ok, before, after = _run({"GEOFG_MALLOC_TRIM": "0"})
    assert ok == "False"
