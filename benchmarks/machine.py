"""What a benchmark ran on: CPU model and count, memory, GPU, and the versions that set the speed."""

from __future__ import annotations

import os
import platform
from importlib import metadata

#: Distributions whose versions change the figures (model, decode, encode, scheduling).
PACKAGES = ("torch", "numpy", "rasterio", "zarr", "numcodecs", "segmentation-models-pytorch", "timm", "ray")


def _proc_field(path: str, key: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return None


def describe() -> dict:
    """The machine and library versions, for a benchmark's report (JSON-ready)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import rasterio

    mem_kb = _proc_field("/proc/meminfo", "MemTotal")
    import torch

    versions["torch"] = torch.__version__  # with its build (+cpu, +cu130)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "mem_gib": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gdal": rasterio.__gdal_version__,
        **versions,
    }
