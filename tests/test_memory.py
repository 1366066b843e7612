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


THP = """
import os, resource
from geofg.runtime import tune_process
import torch
tune_process(reuse_heap=False)  # what the geofg command does for commands that keep glibc's heap
print(os.environ.get("THP_MEM_ALLOC_ENABLE"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    x = torch.ones(32 * 2**20)  # 128 MiB, freed and mapped again each time, like activations
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _thp_mode() -> str | None:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()  # noqa: SIM115
    except OSError:
        return None
    return text[text.find("[") + 1 : text.find("]")]


@pytest.mark.parametrize("value", [None, "0"])
def test_tuned_process_backs_torch_buffers_with_huge_pages_unless_opted_out(value: str | None) -> None:
    """torch reads the setting at its first allocation, so tune_process after `import torch` works."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = value
    out = subprocess.run([sys.executable, "-c", THP], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == (value or "1")
    faults = int(out[1])
    small_pages = 3 * 128 * 2**20 // 4096  # 98,304 faults with 4 KiB pages
    mode = _thp_mode()
    if mode == "madvise":  # huge pages only where asked for: the setting decides
        assert (faults > small_pages * 0.9) if value == "0" else (faults < small_pages / 10)
    elif mode != "always":  # no huge pages on this kernel, whatever the setting
        assert faults > small_pages * 0.9


REUSE = """
import os, resource
import numpy as np
from geofg.memory import trim_heap
from geofg.runtime import tune_process
np._core.multiarray._set_madvise_hugepage(False)  # count 4 KiB faults, whatever numpy would do
applied = tune_process(reuse_heap=True)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(16 * 2**20); del a  # 128 MiB, above glibc's largest mmap threshold
before = faults()
for _ in range(3):
    a = np.ones(16 * 2**20); del a  # allocated again: reused pages fault no more
print(applied, trim_heap(), faults() - before, os.environ["THP_MEM_ALLOC_ENABLE"])
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("env", [{}, {"GEOFG_MALLOC_REUSE": "0"}, {"THP_MEM_ALLOC_ENABLE": "1"}])
def test_reused_heap_serves_the_next_unit_without_faulting_its_pages_in(env: dict[str, str]) -> None:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("MALLOC_", "GEOFG_MALLOC", "THP_MEM"))}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", REUSE], env={**base, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    applied, trimmed, faults, thp = out[0] == "True", out[1] == "True", int(out[2]), out[3]
    pages = 3 * 128 * 2**20 // 4096
    if env.get("GEOFG_MALLOC_REUSE") == "0":
        assert not applied and trimmed and faults > pages * 0.9  # mapped and faulted in again
        assert thp == "1"
    else:
        assert applied and not trimmed  # trimming would hand the reused pages back
        assert faults < pages / 100
        assert thp == env.get("THP_MEM_ALLOC_ENABLE", "0")  # geofg's default off, the user's kept


FRAGMENTED = """
import numpy as np
from geofg.memory import REUSE_SLACK_BYTES, heap_free_bytes, trim_heap
from geofg.runtime import tune_process
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 // 2**20
applied = tune_process(reuse_heap=True)
n = REUSE_SLACK_BYTES // 2**20 + 256  # MiB freed inside the heap, past the slack
bufs = [np.ones(1 << 17) for _ in range(n)]  # 1 MiB each
keep = bufs[1::8]  # every eighth stays: the freed space is holes between them, not the top
del bufs
small = heap_free_bytes() // 2**20
before = rss()
print(applied, small, trim_heap(), before - rss())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_reused_heap_gives_back_what_lies_free_past_its_slack() -> None:
    """A reused heap that fragmented (holes between live buffers, more than REUSE_SLACK_BYTES of
    them) is trimmed: peak RSS stays with the units in flight, not with the heap's history."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("MALLOC_", "GEOFG_MALLOC", "GEOFG_HEAP", "THP_MEM"))}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", FRAGMENTED], env=base, capture_output=True,
                         text=True, check=True).stdout.split()
    applied, free_mb, trimmed, returned_mb = out[0] == "True", int(out[1]), out[2] == "True", int(out[3])
    assert applied and free_mb > 256
    assert trimmed and returned_mb > free_mb * 0.8, out


CLI = """
import sys
from geofg import cli, memory
sys.argv = ["geofg", *sys.argv[1:]]
try:
    cli.main()
except SystemExit:
    pass
print("REUSED", memory.heap_reused())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize(("args", "reused"), [
    (["classify", "--help"], True), (["scan", "--help"], True), (["models", "list"], False),
    (["--version"], False),
])
def test_the_command_reuses_the_heap_only_for_tile_pipeline_commands(args: list[str], reused: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOFG_MALLOC")}
    out = subprocess.run([sys.executable, "-c", CLI, *args], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert f"REUSED {reused}" in out


ENV_REUSE = """
import resource
import numpy as np
np._core.multiarray._set_madvise_hugepage(False)  # count 4 KiB faults, whatever numpy would do
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(16 * 2**20); del a  # 128 MiB, above glibc's largest mmap threshold
before = faults()
for _ in range(3):
    a = np.ones(16 * 2**20); del a
print(faults() - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("reuse", [True, False])
def test_heap_env_gives_a_new_process_the_reused_heap_from_its_start(
        reuse: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """What Ray actors are started with: glibc's policy from the environment, no geofg call."""
    from geofg.runtime import worker_env

    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("MALLOC_", "GEOFG_MALLOC", "THP_MEM"))}  # fmt: skip
    monkeypatch.setenv("GEOFG_MALLOC_REUSE", "1" if reuse else "0")
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    env = worker_env()
    out = subprocess.run([sys.executable, "-c", ENV_REUSE], env={**base, **env}, capture_output=True,
                         text=True, check=True).stdout
    pages = 3 * 128 * 2**20 // 4096
    if reuse:
        assert int(out) < pages / 100 and env["THP_MEM_ALLOC_ENABLE"] == "0"
    else:
        assert env == {"THP_MEM_ALLOC_ENABLE": "1"} and int(out) > pages * 0.9
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")  # the user's own setting is kept
    assert worker_env()["THP_MEM_ALLOC_ENABLE"] == "1"


NO_SIDE_EFFECTS = """
import os, sys
before = dict(os.environ)
import geofg, geofg.memory, geofg.runtime, geofg.config, geofg.errors, geofg.grid, geofg.stitch
assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())
# every other module, after the third-party packages that set variables at their own import
# (rasterio: GDAL/PROJ_CURL_CA_BUNDLE; ray: RAY_CLIENT_MODE), so only geofg's own changes count
import importlib, pkgutil, rasterio, ray, torch
before = dict(os.environ)
for m in pkgutil.walk_packages(geofg.__path__, "geofg."):
    importlib.import_module(m.name)
assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())
assert not geofg.memory.heap_reused()
import resource
import numpy as np
np._core.multiarray._set_madvise_hugepage(False)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(16 * 2**20); del a
before = faults()
for _ in range(3):
    a = np.ones(16 * 2**20); del a
print(faults() - before)
"""


def test_importing_geofg_changes_no_environment_variable_and_no_heap_policy() -> None:
    """Issue 17: `import geofg` wrote THP_MEM_ALLOC_ENABLE. The heap check: with glibc's own
    policy a freed 128 MiB block is unmapped, so allocating it again faults every page in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALLOC_", "GEOFG_MALLOC", "THP_MEM"))}  # fmt: skip
    r = subprocess.run([sys.executable, "-c", NO_SIDE_EFFECTS], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert int(r.stdout) > 3 * 128 * 2**20 // 4096 * 0.9  # not the reused heap's ~0


def test_a_bad_heap_slack_is_named_and_the_default_kept(caplog: pytest.LogCaptureFixture) -> None:
    from geofg.memory import REUSE_SLACK_BYTES, _slack

    assert _slack(None) == REUSE_SLACK_BYTES and _slack("64") == 64 * 2**20
    with caplog.at_level("WARNING", logger="geofg.memory"):
        assert _slack("lots") == REUSE_SLACK_BYTES
    assert "GEOFG_HEAP_SLACK_MB: expected a whole number of MiB, found 'lots'" in caplog.text
