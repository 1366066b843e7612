"""How big a Ray run's actors are: their count and resources, read and write threads, prefetch
and GDAL block cache (:mod:`geofg.runners.ray` starts them; these only size them).
"""

from __future__ import annotations

import ray

from geofg.config import RunnerConfig
from geofg.errors import ClusterError
from geofg.io.reader import RasterReader
from geofg.pipeline import Plan, UnitPlan
from geofg.runners.local import RasterSource


def _actor_shape(p: UnitPlan, n_units: int) -> tuple[str, int, dict[str, float]]:
    """Return (device, actor count, resources per actor) for the connected cluster.

    One actor per GPU present when the run starts (``num_gpus=1``: Ray shows each actor only its
    own GPU), else one CPU actor per CPU; ``runner.num_actors`` overrides the count (e.g. to use
    GPU nodes an autoscaler has yet to add), and there are never more actors than units.
    """
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))
    want = p.job.model.device
    if want == "cuda" and not gpus and not p.job.runner.num_actors:
        raise ClusterError("--device cuda but the Ray cluster has no GPU now; add GPU worker nodes, "
                           "or set runner.num_actors to wait for the autoscaler to add them")
    use_gpu = want == "cuda" or (want == "auto" and gpus > 0)
    n = p.job.runner.num_actors or (gpus if use_gpu else max(1, cpus))
    # a GPU actor's read threads decode on CPUs of its node: reserve them (sized from the cluster's
    # CPUs per GPU, as the local runner sizes them from the machine's); CPU actors take a core
    readers, _ = p.job.runner.io_threads("cuda", max(1, cpus // max(gpus, 1)))
    opts: dict[str, float] = {"num_gpus": 1, "num_cpus": readers} if use_gpu else {"num_cpus": 1}
    return ("cuda" if use_gpu else "cpu"), max(1, min(n, n_units)), opts


def actor_read_threads(runner: RunnerConfig, device: str, reserved_cpus: float | None = None) -> int:
    """Read threads of an actor on ``device``: as many as the CPUs it reserved on a GPU.

    Inside the actor the reserved CPUs come from Ray's runtime context; the driver passes the
    ``num_cpus`` it asks for. CPU actors use :meth:`~geofg.config.RunnerConfig.io_threads`'s
    CPU count.
    """
    if device.startswith("cuda") and runner.read_workers is None:
        if reserved_cpus is None:
            reserved_cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        return max(1, int(reserved_cpus))
    return runner.io_threads(device)[0]


def actor_cache_bytes(reader: RasterReader, p: Plan, lanes: int) -> int:
    """GDAL's block cache for an actor's ``lanes`` read threads: the local runner's
    :func:`~geofg.runners.local.block_cache_bytes` for units of ``p``'s size. The actor has no
    unit list; a 3 x 3-chunk corner of the grid has edge and interior units like the real ones."""
    return RasterSource(p).cache_bytes(reader, None, lanes)


def actor_write_threads(runner: RunnerConfig, device: str, reserved_cpus: float | None = None) -> int:
    """Write threads of an actor: ``runner.write_workers``; else none on CPU (the unit is written
    on the thread that ran the model, as the core is busy anyway), and on a GPU the local
    runner's share of writers beside :func:`actor_read_threads`' readers (4 beside 11).

    Examples:
        >>> actor_write_threads(RunnerConfig(), "cpu"), actor_write_threads(RunnerConfig(write_workers=2), "cpu")
        (0, 2)
        >>> [actor_write_threads(RunnerConfig(), "cuda", cpus) for cpus in (2, 5, 11)]
        [1, 2, 4]
    """
    if runner.write_workers is not None:
        return runner.write_workers
    if not device.startswith("cuda"):
        return 0
    return max(1, (actor_read_threads(runner, device, reserved_cpus) + 1) // 3)


def actor_prefetch(runner: RunnerConfig, device: str, resources: dict[str, float]) -> int:
    """Units the driver reserves ahead of each actor's current one: ``runner.prefetch``, but at
    least one per read thread the actor has (:func:`actor_read_threads`), so that all of them read.

    A GPU actor with 11 read threads and the default prefetch of 2 would otherwise read on 3 of
    them (the local runner's readers starved the same way on the H100 host, benchmarks/HISTORY.md).
    """
    return max(runner.prefetch, actor_read_threads(runner, device, resources.get("num_cpus", 1)))
