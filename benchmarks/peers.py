"""geofg against its peers' own code, running the same model on the same raster (run by hand).

    # once: a side venv with the peers (never a geofg dependency), geofg importable in it
    python3.11 -m venv ../peers && ../peers/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        torchgeo==0.8.1 && ../peers/bin/pip install --no-deps terratorch==1.2.13 -e . \
        && ../peers/bin/pip install safetensors pydantic    # + what terratorch's imports ask for
    python -m benchmarks.peers compare --peer-python ../peers/bin/python --size 4096 --passes 2

Each run is a fresh process timed whole (model load, reads, forwards, stitching, writing):

* ``torchgeo``: TorchGeo 0.8's documented way to predict a scene: a ``RasterDataset`` over the
  GeoTIFF, a ``GridGeoSampler`` (tile, stride = tile - overlap), a ``DataLoader`` (``batch``,
  ``stack_samples``, ``--workers``), and each chip's class map written into a full-scene uint8
  array where its bounds fall (later chips overwrite earlier ones), then one GeoTIFF.
* ``terratorch``: TerraTorch 1.2's ``tiled_inference`` over the whole scene read into memory, as
  its inference CLI does (crop = tile, stride = tile - overlap, its default 8 px ``delta`` and
  blending), argmax, one GeoTIFF.
* ``geofg``: ``geofg classify --no-mask`` (the peers have no cloud mask), once at the peers'
  settings (``--tile-size`` tile, ``--halo`` overlap / 2, ``--batch-size`` batch: tiles of that
  size overlapping by that much inside units geofg sizes to a whole number of tiles, 896 px for
  256 / 32) and once at geofg's defaults.

The model is geofg's bundle (default ``landcover-s2``), loaded with
:func:`~geofg.models.inference.predictor.load_predictor`; the peers call its network under
``no_grad`` on input normalised by the card's statistics (``normalise_tensor``), so every
contender runs the same forward (the lean CPU forward of Dynamic World's network included).
The peers write only the class map; geofg writes class, confidence, health and index layers and
a ledger. Prints one JSON line per run and a table; ratios are geofg's Mpx/s over the best
peer's, from runs side by side in the same pass.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _model(name: str, plain: bool = False):  # noqa: ANN202
    """(card, forward): softmax probabilities of the bundle's network on raw float32 samples.

    ``plain``: the network as its architecture reads (every layer on the whole tile, as a
    straightforward port would run it), not geofg's lean inference path (row strips, folded batch
    norm, in-place activations; docs/models.md), which the peers otherwise share with geofg.
    """
    import torch

    if plain:
        import geofg.models.inference.dynamicworld as dw

        dw._lean = lambda: False  # noqa: SLF001 - a benchmark switch, not an API

    from geofg.models.inference.predictor import load_predictor, normalise_tensor

    pred = load_predictor(name, "cpu")
    card, net = pred.card, pred.model

    def forward(x: torch.Tensor) -> torch.Tensor:
        valid = torch.ones((x.shape[0], *x.shape[2:]), dtype=torch.bool)
        x = normalise_tensor(x.float().clone(), valid, card.scale, card.mean, card.std,
                             card.normalisation)
        return torch.softmax(net(x), dim=1)

    return card, forward


def _band_indexes(path: str, bands: list[str]) -> list[int]:
    import rasterio

    with rasterio.open(path) as src:
        names = list(src.descriptions)
    return [names.index(b) + 1 for b in bands]


def _write_classes(path: str, out: str, classes: np.ndarray) -> None:
    import rasterio

    with rasterio.open(path) as src:
        profile = {"driver": "GTiff", "height": src.height, "width": src.width, "count": 1,
                   "dtype": "uint8", "crs": src.crs, "transform": src.transform, "tiled": True,
                   "compress": "deflate"}
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(classes, 1)


def run_torchgeo(path: str, out: str, model: str, tile: int, overlap: int, batch: int,
                 workers: int, plain: bool = False) -> dict:
    """TorchGeo: RasterDataset + GridGeoSampler + DataLoader, overwrite stitch."""
    import rasterio
    import torch
    import torchgeo
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    card, forward = _model(model, plain)
    with rasterio.open(path) as src:
        names, height, width = list(src.descriptions), src.height, src.width
        left, top, res = src.bounds.left, src.bounds.top, src.res[0]

    class Scene(RasterDataset):
        filename_glob = Path(path).name
        is_image = True
        separate_files = False
        all_bands = tuple(names)

    ds = Scene(paths=[path], bands=list(card.bands))
    sampler = GridGeoSampler(ds, size=tile, stride=tile - overlap)
    loader = DataLoader(ds, sampler=sampler, batch_size=batch, collate_fn=stack_samples,
                        num_workers=workers)
    classes = np.zeros((height, width), dtype=np.uint8)
    chips = 0
    with torch.no_grad():
        for sample in loader:
            cls = forward(sample["image"]).argmax(1).to(torch.uint8).numpy()
            for i, bounds in enumerate(sample["bounds"]):
                x, y = bounds[0], bounds[1]
                # the grid runs from the bottom left; its last chips reach past the top and right
                c0, r0 = round((x.start - left) / res), round((top - y.stop) / res)
                rs, cs = max(0, -r0), max(0, -c0)
                r1, c1 = min(height, r0 + tile), min(width, c0 + tile)
                classes[r0 + rs : r1, c0 + cs : c1] = cls[i, rs : r1 - r0, cs : c1 - c0]
                chips += 1
    _write_classes(path, out, classes)
    return {"peer": f"torchgeo {torchgeo.__version__}", "chips": chips, "workers": workers}


def run_terratorch(path: str, out: str, model: str, tile: int, overlap: int, batch: int,
                   plain: bool = False) -> dict:
    """TerraTorch: the whole scene in memory through ``tiled_inference``."""
    import rasterio
    import terratorch
    import torch
    from terratorch.tasks.tiled_inference import tiled_inference

    # importing terratorch sets torch's float32 matmul precision to "medium" (its Clay backbone
    # module does, at import), which on CPU runs matmuls in bfloat16: the same model means fp32
    torch.set_float32_matmul_precision("highest")
    card, forward = _model(model, plain)
    with rasterio.open(path) as src:
        x = torch.from_numpy(src.read(_band_indexes(path, list(card.bands))).astype(np.float32))[None]
    probs = tiled_inference(forward, x, crop=tile, stride=tile - overlap, batch_size=batch)
    classes = probs[0].argmax(0).to(torch.uint8).numpy()
    _write_classes(path, out, classes)
    return {"peer": f"terratorch {getattr(terratorch, '__version__', '1.2.13')}"}


def _one(args: argparse.Namespace) -> int:
    t = time.perf_counter()
    if args.peer == "torchgeo":
        info = run_torchgeo(args.raster, args.out, args.model, args.tile, args.overlap, args.batch,
                            args.workers, args.plain_forward)
    else:
        info = run_terratorch(args.raster, args.out, args.model, args.tile, args.overlap, args.batch,
                              args.plain_forward)
    info["forward"] = "plain" if args.plain_forward else "geofg's lean path"
    wall = time.perf_counter() - t
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({**info, "wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
                      "peak_rss_kb": ru.ru_maxrss}), flush=True)
    return 0


def _timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` under /usr/bin/time: wall seconds, CPU seconds, peak RSS (KiB), its last line."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "TIME %e %U %S %M", *cmd], capture_output=True,
                       text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    e, u, s, m = next(ln for ln in p.stderr.splitlines() if ln.startswith("TIME ")).split()[1:]
    last = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    return {"wall_s": round(wall, 2), "cpu_s": round(float(u) + float(s), 1), "peak_rss_kb": int(m),
            **({"report": json.loads(last[-1])} if last else {})}


def _agreement(a: str, b: str) -> float:
    import rasterio

    with rasterio.open(a) as x, rasterio.open(b) as y:
        return float((x.read(1) == y.read(1)).mean())


def _geofg_classes(mosaic: Path, out: str, raster: str) -> None:
    import zarr

    _write_classes(raster, out, np.asarray(zarr.open_group(mosaic, mode="r")["class"][:]))


def compare(args: argparse.Namespace) -> int:
    """Side by side, ``--passes`` times: the peers and geofg on one generated raster."""
    from benchmarks.rasters import bench_raster, scene_source

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    raster = str(bench_raster(work, args.size, source=scene_source("scene")))
    geofg = [sys.executable, "-m", "geofg.cli", "classify", raster, "--model", args.model,
             "--no-mask", "--device", "cpu", "-q", "--overwrite"]
    peer = [args.peer_python, "-m", "benchmarks.peers", "one", raster, "--model", args.model,
            "--tile", str(args.tile), "--overlap", str(args.overlap), "--batch", str(args.batch),
            *(["--plain-forward"] if args.plain_forward else [])]
    runs = {
        "geofg, defaults": [*geofg, "-o", str(work / "peers_geofg.zarr")],
        f"geofg, tile {args.tile} overlap {args.overlap} batch {args.batch}": [
            *geofg, "-o", str(work / "peers_geofg_t.zarr"), "--tile-size", str(args.tile),
            "--halo", str(args.overlap // 2), "--batch-size", str(args.batch)],
        "torchgeo": [*peer, "torchgeo", "--out", str(work / "peers_torchgeo.tif")],
        f"torchgeo, {args.workers} loader workers": [
            *peer, "torchgeo", "--workers", str(args.workers), "--out",
            str(work / "peers_torchgeo_w.tif")],
        "terratorch": [*peer, "terratorch", "--out", str(work / "peers_terratorch.tif")],
    }
    px = args.size * args.size
    results: list[dict] = []
    print(f"load before: {os.getloadavg()}", flush=True)
    for n in range(args.passes):
        for name, cmd in runs.items():
            r = {"pass": n + 1, "run": name, **_timed(cmd, {"HF_HUB_OFFLINE": "1"})}
            r["mpx_s"] = round(px / r["wall_s"] / 1e6, 4)
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"load after: {os.getloadavg()}", flush=True)
    _geofg_classes(work / "peers_geofg_t.zarr", str(work / "peers_geofg_t.tif"), raster)
    agree = {p: round(_agreement(str(work / "peers_geofg_t.tif"), str(work / f"peers_{p}.tif")), 4)
             for p in ("torchgeo", "terratorch")}
    print(f"\nclass agreement of geofg at the peers' settings with: {agree}")
    print(f"\n{args.size}² scene raster, {args.model}, {os.cpu_count()} CPUs")
    print(f"{'run':42s} {'pass':>4} {'wall s':>8} {'Mpx/s':>7} {'CPU s':>7} {'peak RSS GiB':>12}")
    for r in results:
        print(f"{r['run']:42s} {r['pass']:>4} {r['wall_s']:>8.1f} {r['mpx_s']:>7.3f} {r['cpu_s']:>7.1f}"
              f" {r['peak_rss_kb'] / 2**20:>12.2f}")
    for n in range(args.passes):
        mine = {r["run"]: r["mpx_s"] for r in results if r["pass"] == n + 1}
        best = max(v for k, v in mine.items() if not k.startswith("geofg"))
        print(f"pass {n + 1}: geofg / best peer: defaults {mine['geofg, defaults'] / best:.2f}x, at the"
              f" peers' settings {mine[next(k for k in mine if k.startswith('geofg, tile'))] / best:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "model": args.model, "agreement": agree,
                                         "runs": results}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``one``: a single peer run (in the peers' venv); ``compare``: the side-by-side table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    one = sub.add_parser("one")
    one.add_argument("raster")
    one.add_argument("peer", choices=["torchgeo", "terratorch"])
    one.add_argument("--out", required=True)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("--peer-python", required=True, help="the peers' venv's python")
    cmp_.add_argument("--size", type=int, default=4096)
    cmp_.add_argument("--passes", type=int, default=2)
    cmp_.add_argument("--workdir", type=Path, default=Path(".bench"))
    cmp_.add_argument("--json", type=Path, default=None)
    one.add_argument("--workers", type=int, default=0, help="TorchGeo DataLoader workers")
    cmp_.add_argument("--workers", type=int, default=2, help="the second TorchGeo run's loader workers")
    for p in (one, cmp_):
        p.add_argument("--plain-forward", action="store_true",
                       help="the peers run the network's plain graph (a straightforward port), not"
                            " geofg's lean inference path; geofg's own runs are unchanged")
        p.add_argument("--model", default="landcover-s2")
        p.add_argument("--tile", type=int, default=256)
        p.add_argument("--overlap", type=int, default=32)
        p.add_argument("--batch", type=int, default=4)
    a = ap.parse_args(argv)
    return _one(a) if a.cmd == "one" else compare(a)


if __name__ == "__main__":
    sys.exit(main())
