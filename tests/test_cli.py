"""The CLI end to end on generated rasters with the packaged model: exit codes, mosaic, CRS.

Each rejection must exit 3 with one line naming the file, and create no output.
"""

from __future__ import annotations

import os
import signal
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from geofg.cli import app
from geofg.io.ledger import Ledger
from rasters import S2_BANDS, s2_like, write_raster

runner = CliRunner()


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "scene.tif", s2_like(150, 130), descriptions=S2_BANDS)


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_is_fast_and_torch_free() -> None:
    code = "import sys, geofg.cli; sys.exit('torch' in sys.modules or 'ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_classify_writes_mosaic_summary_and_quicklook(tmp_path: Path, scene: Path) -> None:
    out = tmp_path / "out.zarr"
    r = invoke("classify", str(scene), "-o", str(out), "--chunk", "64", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "area per class" in r.output and "landcover-s2" in r.output and "crops" in r.output
    g = zarr.open_group(str(out), mode="r")
    cls = g["class"][:]
    mask = g["mask"][:] if "mask" in g else np.zeros_like(cls)
    # every pixel valid: classified (9 classes), or masked as cloud, shadow or snow
    assert cls.shape == (150, 130) and ((cls < 9) == (mask == 0)).all()
    conf = g["confidence"][:]
    assert (conf[mask == 0] <= 250).all() and (conf[mask != 0] == 255).all()  # masked: no data
    assert Path(f"{out}.png").stat().st_size > 1000
    info = invoke("info", str(out))
    assert info.exit_code == 0 and "9/9 done" in info.output and "EPSG:32633" in info.output
    assert "ndvi: uint8 [150, 130]" in info.output and "value = code x 0.01 -1, 255 no data" in info.output
    # re-run resumes: nothing to do
    r2 = invoke("classify", str(scene), "-o", str(out), "--chunk", "64", "--device", "cpu")
    assert r2.exit_code == 0 and "0 run, 9 already done" in r2.output


def test_a_mosaic_of_an_older_schema_is_refused_in_one_line_and_overwrite_rebuilds_it(
        tmp_path: Path, scene: Path) -> None:  # fmt: skip
    out = tmp_path / "out.zarr"
    args = ("classify", str(scene), "-o", str(out), "--chunk", "64", "--device", "cpu")
    assert invoke(*args).exit_code == 0
    g = zarr.open_group(str(out), mode="r+")
    grid = dict(g.attrs["geofg:grid"])
    grid.update(schema_version=2, layers=[n for n in grid["layers"] if n != "ndvi"])  # as geofg wrote it before
    g.attrs["geofg:grid"] = grid
    r = invoke(*args)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 3 and len(lines) == 1, r.output
    assert "expected a mosaic of schema 3" in r.output and "found schema 2" in r.output and "--overwrite" in r.output
    assert invoke(*args, "--overwrite").exit_code == 0
    assert zarr.open_group(str(out), mode="r").attrs["geofg:grid"]["schema_version"] == 3


def test_dry_run_writes_nothing(tmp_path: Path, scene: Path) -> None:
    out = tmp_path / "out.zarr"
    r = invoke("classify", str(scene), "-o", str(out), "--chunk", "64", "--dry-run")
    assert r.exit_code == 0 and "9 units" in r.output and "peak memory" in r.output
    assert not out.exists()


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    empty = tmp / "empty.tif"
    empty.write_bytes(b"")
    text = tmp / "table.tif"
    text.write_text("x,y,z\n1,2,3\n")
    nocrs = write_raster(tmp / "nocrs.tif", s2_like(20, 20), crs=None, descriptions=S2_BANDS)
    from affine import Affine

    rotated = write_raster(tmp / "rot.tif", s2_like(20, 20), descriptions=S2_BANDS,
                           transform=Affine(10, 2, 500000, 2, -10, 5800000))
    four = write_raster(tmp / "four.tif", s2_like(20, 20)[:4], descriptions=S2_BANDS[:4])
    return {"missing": tmp / "nope.tif", "empty": empty, "text": text, "nocrs": nocrs,
            "rotated": rotated, "bands": four, "directory": tmp / "emptydir"}


@pytest.mark.parametrize("case", ["missing", "empty", "text", "nocrs", "rotated", "bands", "directory"])
def test_bad_input_exits_3_with_one_line_and_no_output(tmp_path: Path, case: str) -> None:
    (tmp_path / "emptydir").mkdir()
    inp = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out.zarr"
    r = invoke("classify", str(inp), "-o", str(out))
    assert r.exit_code == 3, r.output
    msg = r.stderr.strip()
    assert msg.startswith("geofg: error:") and "Traceback" not in r.output
    assert inp.name in msg and len(msg.splitlines()) == 1, msg
    assert not out.exists()


class _Marker:
    """Unpickling this writes a file: a pickle that runs code when loaded, as a hostile one would."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.path), "w"))


def _pickles(folder: Path, marker: Path) -> list[Path]:
    """The same code-running payload as a raw pickle and as a torch.save zip, under the names a
    user would give: .pt, .pth, .ckpt, and renamed to .safetensors."""
    import pickle

    import torch

    raw = pickle.dumps(_Marker(marker))
    torch.save({"state_dict": _Marker(marker)}, folder / "zipped.pt")
    out = []
    for name, blob in (("raw.pt", raw), ("raw.pth", raw), ("raw.ckpt", raw), ("raw.safetensors", raw),
                       ("zipped.safetensors", (folder / "zipped.pt").read_bytes())):
        (folder / name).write_bytes(blob)
        out.append(folder / name)
    return [*out, folder / "zipped.pt"]


def test_pickled_weights_refused_before_any_byte_is_unpickled(tmp_path: Path, scene: Path) -> None:
    import pickle

    import torch

    # the payloads are real: loading them the unsafe way does run their code
    proof = tmp_path / "proof"
    for p in _pickles(tmp_path, proof)[:2]:
        pickle.loads(p.read_bytes())
        assert proof.exists()
        proof.unlink()
    torch.load(_pickles(tmp_path, proof)[-1], weights_only=False)
    assert proof.exists()

    marker = tmp_path / "marker"
    out = tmp_path / "out.zarr"
    for model in _pickles(tmp_path, marker):
        r = invoke("classify", str(scene), "-o", str(out), "--model", str(model))
        msg = r.stderr.strip()
        assert r.exit_code == 3, (model.name, r.output)
        assert len(msg.splitlines()) == 1 and model.name in msg and "Traceback" not in r.output
        why = msg.replace(str(model), "")  # (the test's own folder name says "pickled")
        assert "refused" in why and ".safetensors" in why, msg
        assert "pickle" in why or "zip" in why, msg
        assert not marker.exists(), f"{model.name} was unpickled"
        assert not out.exists()


def test_unknown_model_and_bad_option(tmp_path: Path, scene: Path) -> None:
    r = invoke("classify", str(scene), "-o", str(tmp_path / "o.zarr"), "--model", "nope")
    assert r.exit_code == 3 and "eurosat-13" in r.stderr
    r = invoke("classify", str(scene), "--batch-size", "0")
    assert r.exit_code == 3 and "batch_size" in r.stderr
    assert invoke("classify").exit_code == 2


def _geofg(*args: str) -> list[str]:
    return [sys.executable, "-m", "geofg.cli", *args]


def test_sigkill_mid_run_then_resume_equals_clean_run(tmp_path: Path) -> None:
    """Resuming is the subject, not the model: the cheap packaged `eurosat-13`, no mask (the
    default model and its mask take minutes per run here for the same 144 units)."""
    scene = write_raster(tmp_path / "big.tif", s2_like(384, 384, seed=2), descriptions=S2_BANDS)
    clean, killed = tmp_path / "clean.zarr", tmp_path / "killed.zarr"
    common = [str(scene), "--model", "eurosat-13", "--no-mask", "--chunk", "32", "--device", "cpu", "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(_geofg("classify", *common, "-o", str(clean)), check=True, env=env)

    proc = subprocess.Popen(_geofg("classify", *common, "-o", str(killed)), env=env)
    units = killed / ".geofg" / "units"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(units.glob("*.json"))) < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {uid: r for uid, r in Ledger(killed / ".geofg").load().items() if r.status == "done"}
    assert 0 < len(before) < 144, "the kill must land mid-run"
    killed_run = {r.run_id for r in before.values()}
    assert len(killed_run) == 1

    r = subprocess.run(_geofg("classify", *common, "-o", str(killed)), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # the dead run's lock was taken over automatically
    a, b = zarr.open_group(str(clean), mode="r"), zarr.open_group(str(killed), mode="r")
    for layer in ("class", "health", "confidence"):
        np.testing.assert_array_equal(a[layer][:], b[layer][:])
    after = Ledger(killed / ".geofg").load()
    assert len(after) == 144 and all(r.status == "done" for r in after.values())
    # resumed, not redone: every unit done before the kill keeps the killed run's record
    assert {uid: after[uid] for uid in before} == before
    assert {r.run_id for uid, r in after.items() if uid not in before}.isdisjoint(killed_run)


@pytest.fixture
def unet_bundle(tmp_path: Path) -> Path:
    """A 4-band smp U-Net bundle with random weights (a test fixture, never shipped)."""
    import torch

    from geofg.models.inference.bundle import write_bundle
    from geofg.models.inference.nets import build_model
    from geofg.models.inference.tiny import tiny_card

    card = tiny_card(["B02", "B03", "B04", "B08"], ["water", "land", "crop"], task="segmentation",
                     crop_classes=["crop"], tile_size=64, halo=16, scale=1e-4, tile_multiple=32)
    card = card.model_copy(update={"architecture": "unet", "encoder": "resnet18", "name": "test-unet"})
    torch.manual_seed(0)
    net = build_model(card)
    path = tmp_path / "unet.safetensors"
    write_bundle(path, {k: v.numpy() for k, v in net.state_dict().items()}, card)
    return path


def test_segment_runs_a_unet_bundle_and_classify_refuses_nothing(tmp_path: Path, unet_bundle: Path) -> None:
    data = s2_like(70, 90)[[1, 2, 3, 7]]
    scene = write_raster(tmp_path / "rgbn.tif", data, descriptions=["B02", "B03", "B04", "B08"])
    out = tmp_path / "seg.zarr"
    r = invoke("segment", str(scene), "--model", str(unet_bundle), "-o", str(out), "--chunk", "32",
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    cls = zarr.open_group(str(out), mode="r")["class"][:]
    assert cls.shape == (70, 90) and cls.max() <= 2
    # the classify command with the default 9-band model refuses this 4-band input (band contract)
    r = invoke("classify", str(scene), "-o", str(tmp_path / "c.zarr"))
    assert r.exit_code == 3 and "B05" in r.stderr and not (tmp_path / "c.zarr").exists()


def test_models_list_shows_default_bundle_metrics() -> None:
    r = invoke("models", "list")
    assert r.exit_code == 0 and "eurosat-13" in r.output and "test_accuracy" in r.output


def test_profile_splits_compute_into_its_stages(tmp_path: Path, scene: Path) -> None:
    # the profile is the subject, not the cloud mask (12 s of CPU per run here): --no-mask
    r = invoke("classify", str(scene), "-o", str(tmp_path / "p.zarr"), "--chunk", "64", "--device", "cpu",
               "--no-mask", "--profile")
    assert r.exit_code == 0, r.output
    sec = {m.group(1): float(m.group(2))
           for m in re.finditer(r"^\W*(\w+)\s*\W\s*(?:[a-z]*\s*\W\s*)?([\d.]+)\s", r.output, re.M)}
    for stage in ("read", "compute", "normalise", "forward", "blend", "layers", "write"):
        assert stage in sec, (stage, r.output)
    assert sec["forward"] > 0
    parts = sec["forward"] + sec["blend"]
    assert parts <= sec["compute"] * 1.001 + 0.01  # the parts are inside compute
    assert parts >= 0.5 * sec["compute"]  # and account for most of it
    assert re.search(r"normalise\W+reader", r.output) and re.search(r"layers\W+writer", r.output)
    assert "busy total" in r.output
    # the printout rounds to 10 ms, which the layers of 9 small units may not reach: the profile
    # itself has them, timed on the reader and writer threads
    from geofg.config import build_job
    from geofg.run import run_job

    res = run_job(build_job({"read": {"inputs": [str(scene)]}, "tile": {"chunk": 64},
                             "model": {"device": "cpu"}, "mask": {"mode": "off"},
                             "write": {"output": str(tmp_path / "q.zarr")}}))
    prof, cpu = res.profile, res.cpu
    assert prof["normalise"] > 0 and prof["layers"] > 0 and prof["write"] > 0
    # CPU by thread: the readers' and writers' own, inside the whole process's over the unit loop
    assert cpu["reader"] > 0 and cpu["writer"] > 0 and cpu["process"] > cpu["reader"] + cpu["writer"]
    assert cpu["wall"] > 0 and cpu["cores"] >= 1
    m = re.search(r"CPU ([\d.]+) s over ([\d.]+) s on (\d+) cores: readers ([\d.]+), writers ([\d.]+), "
                  r"compute and the rest ([\d.]+); idle ([\d.]+) core-s \((\d+) %\)", " ".join(r.output.split()))
    assert m, r.output
    total, wall, cores, readers, writers, rest, idle, _ = (float(v) for v in m.groups())
    assert abs(readers + writers + rest - total) < 0.02 and abs(cores * wall - total - idle) < 0.05


def test_compile_runs_one_compiled_network_at_one_tile_shape(tmp_path: Path, scene: Path, monkeypatch) -> None:
    import torch

    compiled, shapes = [], set()

    class Recorder(torch.nn.Module):
        """Stands in for torch.compile's module (compiling for real takes ~40 s): records shapes."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shapes.add(tuple(x.shape))
            return self.net(x)

    def fake_compile(model, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        compiled.append(model)
        return Recorder(model)

    monkeypatch.setattr(torch, "compile", fake_compile)
    out = tmp_path / "c.zarr"
    # compiling is the subject, not the cloud mask (12 s of CPU per run here): --no-mask
    r = invoke("classify", str(scene), "-o", str(out), "--chunk", "64", "--device", "cpu", "--no-mask", "--compile")
    assert r.exit_code == 0, r.output
    assert len(compiled) == 1
    # 150 x 130 in 64-px units: the last row and column read windows are smaller than the 128-px
    # tile (64 + 2 x the default model's 32-px halo) both ways at the corner; compiled, every unit
    # is still predicted at 128 x 128 with the model's 9 bands
    assert shapes == {(1, 9, 128, 128)}
    eager = tmp_path / "e.zarr"
    assert invoke("classify", str(scene), "-o", str(eager), "--chunk", "64", "--device", "cpu",
                  "--no-mask").exit_code == 0
    a, b = zarr.open_group(str(out), mode="r"), zarr.open_group(str(eager), mode="r")
    differ = a["class"][:] != b["class"][:]
    # the same network, so only the corner unit (a bigger tile: more zero padding past the raster
    # edge) can differ, and only in a few near-tie pixels
    assert not differ[:128].any() and not differ[:, :128].any()
    assert differ.sum() <= 10


def test_compile_refuses_an_onnx_model_with_one_line(tmp_path: Path) -> None:
    from geofg.errors import ConfigError
    from geofg.models.inference.ensemble import load_one

    with pytest.raises(ConfigError, match=r"m\.onnx: --compile expects a \.safetensors bundle"):
        load_one(tmp_path / "m.onnx", "cpu", compile=True)


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` impossible to import, as when their extra is not installed."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


@pytest.mark.parametrize("how", [["--runner", "ray"], ["--ray-address", "auto"]])
def test_missing_ray_extra_is_one_line_with_the_install_command_and_writes_nothing(
    tmp_path: Path, scene: Path, monkeypatch: pytest.MonkeyPatch, how: list[str]
) -> None:
    _without(monkeypatch, "ray")
    out = tmp_path / "out.zarr"
    r = invoke("classify", str(scene), "-o", str(out), "--chunk", "64", *how)
    msg = r.stderr.strip()
    assert r.exit_code == 3, r.output
    assert len(msg.splitlines()) == 1 and "Traceback" not in r.output, msg
    assert "pip install 'geofg[ray]'" in msg, msg  # brackets kept (not eaten as rich markup)
    assert "━" not in r.output  # no progress bar for a run that never started
    assert not out.exists()


def test_missing_ray_extra_for_submit_and_scan(tmp_path: Path, scene: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "ray")
    r = invoke("submit", "--address", "http://127.0.0.1:1", "--", str(scene), "-o", str(tmp_path / "o.zarr"))
    assert r.exit_code == 3 and "pip install 'geofg[ray]'" in r.stderr and "Traceback" not in r.output, r.output
    (tmp_path / "inbox").mkdir()
    cfg = tmp_path / "scan.yaml"
    cfg.write_text(
        f"inbox: {{folder: {tmp_path / 'inbox'}}}\nmosaic: {tmp_path / 'm.zarr'}\n"
        "grid: {crs: 'EPSG:32633', resolution: 10, origin: [500000, 5800000],"
        " extent: [500000, 5799000, 501000, 5800000], chunk: 32}\nrunner: {kind: ray}\n")
    r = invoke("scan", str(cfg))
    assert r.exit_code == 3 and "pip install 'geofg[ray]'" in r.stderr, r.output
    assert not (tmp_path / "m.zarr").exists()


def test_missing_onnx_extra_keeps_the_brackets_of_its_install_command(
    tmp_path: Path, scene: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without(monkeypatch, "onnx", "onnxruntime", "onnxscript")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08\x07")  # never parsed: the extra is checked first
    out = tmp_path / "out.zarr"
    r = invoke("classify", str(scene), "-o", str(out), "--model", str(model))
    assert r.exit_code == 3, r.output
    assert "pip install 'geofg[onnx]'" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "━" not in r.output and not out.exists()
    r = invoke("export", "eurosat-13", "--onnx", str(tmp_path / "x.onnx"))
    assert r.exit_code == 3 and "pip install 'geofg[onnx]'" in r.stderr, r.output
    assert not (tmp_path / "x.onnx").exists()


def test_progress_bar_only_after_preflight(tmp_path: Path, scene: Path) -> None:
    (tmp_path / "emptydir").mkdir()
    r = invoke("classify", str(_bad_inputs(tmp_path)["bands"]), "-o", str(tmp_path / "bad.zarr"))
    assert r.exit_code == 3 and "━" not in r.output and "0/None" not in r.output, r.output
    r = invoke("classify", str(scene), "-o", str(tmp_path / "ok.zarr"), "--chunk", "64", "--device", "cpu",
               "--no-mask")  # the bar is the subject, not the cloud mask (12 s of CPU per run here)
    assert r.exit_code == 0 and "━" in r.output and "9/9" in r.output, r.output
