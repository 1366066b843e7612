"""ONNX export (fp32, int8) of tiny random-weight bundles, the ONNX predictor contract, classify with
an .onnx model, and refusals (pickles, cardless or external-data ONNX files): exit 3, nothing written.

One dynamo export (~10 s) is shared by the module; the int8 model is quantised from it.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from geofg.cli import app  # noqa: E402
from geofg.errors import ConfigError, WeightsError  # noqa: E402
from geofg.models.inference.bundle import read_card, write_bundle  # noqa: E402
from geofg.models.inference.card import ClassInfo, ModelCard  # noqa: E402
from geofg.models.inference.nets import build_model  # noqa: E402
from geofg.models.inference.onnx import (  # noqa: E402
    EXPORT_KEY,
    load_onnx_predictor,
    read_export_report,
    read_onnx_card,
)
from geofg.models.inference.predictor import load_predictor  # noqa: E402
from geofg.models.inference.registry import read_model_card, resolve_model  # noqa: E402
from geofg.models.tools.export import chip_canvases, export_onnx, load_split, quantise_onnx  # noqa: E402
from rasters import write_raster  # noqa: E402

BANDS = ["B02", "B03", "B04", "B08", "B11"]
runner = CliRunner()


def tiny_card(name: str = "tiny-fcn") -> ModelCard:
    return ModelCard(
        name=name, version="0", task="patch-classification", architecture="fcn-classifier",
        encoder="tu-mobilenetv4_conv_small", bands=BANDS, scale=1e-4,
        mean=[0.1, 0.1, 0.1, 0.3, 0.2], std=[0.05, 0.05, 0.05, 0.1, 0.08],
        classes=[ClassInfo(name=n, colour="#123456") for n in ("water", "forest", "crop")],
        crop_classes=["crop"], tile_size=128, halo=32, patch_size=64,
    )


def tiny_bundle(path: Path, card: ModelCard, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = build_model(card).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    write_bundle(path, {k: v.numpy() for k, v in net.state_dict().items()}, card)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("onnx")
    bundle = tiny_bundle(d / "tiny.safetensors", tiny_card())
    fp32 = d / "tiny.onnx"
    export_onnx(bundle, fp32, speed_batch=(1, 128), speed_runs=1, threads=2)
    cal = chip_canvases(np.random.default_rng(3).normal(0, 1, (36, 5, 64, 64)).astype(np.float32))
    int8 = d / "tiny-int8.onnx"
    quantise_onnx(fp32, int8, cal)
    return {"bundle": bundle, "fp32": fp32, "int8": int8}


def batch(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, len(BANDS), h, w)).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 96, 160), (2, 192, 128)])
def test_fp32_onnx_equals_bundle_at_any_batch_and_size(exported: dict[str, Path],
                                                        shape: tuple[int, int, int]) -> None:
    ref = load_predictor(exported["bundle"], device="cpu")
    pred = load_onnx_predictor(exported["fp32"], threads=2)
    x = batch(*shape)
    p = pred.predict(x)
    assert p.shape == (shape[0], 3, shape[1], shape[2]) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p, ref.predict(x), atol=2e-5)


def test_card_and_report_travel_in_metadata(exported: dict[str, Path]) -> None:
    src = read_card(exported["bundle"])
    card = read_onnx_card(exported["fp32"])
    assert card.name == "tiny-fcn-onnx" and "geofg export" in card.made_by
    assert card.model_dump(exclude={"name", "made_by"}) == src.model_dump(exclude={"name", "made_by"})
    assert read_model_card(resolve_model(str(exported["fp32"]))) == card
    rep = read_export_report(exported["fp32"])
    assert rep["precision"] == "fp32" and rep["max_abs_prob_diff"] < 1e-4
    assert rep["speed"]["batch"] == [1, 5, 128, 128] and rep["speed"]["speedup_vs_torch"] > 0
    assert read_onnx_card(exported["int8"]).name == "tiny-fcn-int8"


def test_int8_is_quantised_smaller_and_close(exported: dict[str, Path]) -> None:
    model = onnx.load(str(exported["int8"]))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = {}  # weight name -> is the weight int8 (fed through DequantizeLinear)?
    for n in model.graph.node:
        if n.op_type == "Conv":
            w = producer.get(n.input[1])
            name = w.input[0] if w is not None and w.op_type == "DequantizeLinear" else n.input[1]
            convs[name] = w is not None and w.op_type == "DequantizeLinear"
    enc = {k: v for k, v in convs.items() if k.startswith("encoder.")}
    rest = {k: v for k, v in convs.items() if k.startswith(("spectral.", "head."))}
    assert enc and all(enc.values()), "every encoder conv is int8"
    assert rest and not any(rest.values()), "spectral branch and head stay fp32"
    assert exported["int8"].stat().st_size < 0.5 * exported["fp32"].stat().st_size
    x = batch(2, 128, 128, seed=5)
    a = load_onnx_predictor(exported["fp32"], threads=2).predict(x)
    b = load_onnx_predictor(exported["int8"], threads=2).predict(x)
    np.testing.assert_allclose(b.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(a - b).mean() < 0.05  # quantisation noise, not a different model
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.8


def test_predict_contract_errors(exported: dict[str, Path]) -> None:
    pred = load_onnx_predictor(exported["fp32"], threads=1)
    with pytest.raises(ConfigError, match="expects 5 bands"):
        pred.predict(np.zeros((1, 4, 64, 64), np.float32))
    with pytest.raises(ConfigError, match="multiples of 32"):
        pred.predict(np.zeros((1, 5, 70, 64), np.float32))


def test_classify_runs_the_onnx_model_like_the_bundle(exported: dict[str, Path],
                                                      tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(200, 4000, (5, 96, 112)).astype("uint16")
    scene = write_raster(tmp_path / "scene.tif", data, descriptions=BANDS)
    maps = {}
    for kind in ("bundle", "fp32"):
        out = tmp_path / f"{kind}.zarr"
        r = runner.invoke(app, ["classify", str(scene), "-o", str(out), "--model",
                                str(exported[kind]), "--chunk", "64", "--device", "cpu", "-q",
                                "--no-mask"])  # the model is the subject, not the cloud mask
        assert r.exit_code == 0, r.output
        g = zarr.open_group(str(out), mode="r")
        maps[kind] = g["class"][:], g["confidence"][:]
        prov = json.loads(json.dumps(dict(g.attrs)))["geofg:model"]
        assert prov["name"] == ("tiny-fcn" if kind == "bundle" else "tiny-fcn-onnx")
    np.testing.assert_array_equal(maps["bundle"][0], maps["fp32"][0])
    assert np.abs(maps["bundle"][1].astype(int) - maps["fp32"][1]).max() <= 1


def test_export_cli_refuses_pickles_and_writes_nothing(tmp_path: Path) -> None:
    canary = tmp_path / "canary"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (canary.write_text, ("pwned",))

    payload = pickle.dumps(Evil(), protocol=4)
    for name in ("model.pt", "model.safetensors"):
        (tmp_path / name).write_bytes(payload)
    for name in ("model.pt", "model.safetensors"):
        out = tmp_path / "out.onnx"
        r = runner.invoke(app, ["export", str(tmp_path / name), "--onnx", str(out)])
        assert r.exit_code == 3, r.output
        assert "pickle" in r.output and len(r.output.strip().splitlines()) == 1
        assert not canary.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.safetensors"]


def test_export_refuses_existing_output_and_wrong_suffix(exported: dict[str, Path],
                                                         tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="existing file"):
        export_onnx(exported["bundle"], exported["fp32"])
    with pytest.raises(ConfigError, match="ending in .onnx"):
        export_onnx(exported["bundle"], tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="calibration"):
        export_onnx(exported["bundle"], tmp_path / "y.onnx", int8=True)
    assert list(tmp_path.iterdir()) == []


def test_onnx_files_without_card_or_with_external_data_are_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])
    w = numpy_helper.from_array(np.ones((1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(plain))
    with pytest.raises(WeightsError, match="no card"):
        read_onnx_card(plain)
    ext = tmp_path / "ext.onnx"
    onnx.save(helper.make_model(graph), str(ext), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    with pytest.raises(WeightsError, match="external data"):
        read_onnx_card(ext)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x80\x04not a protobuf" * 10)
    with pytest.raises(WeightsError):
        read_onnx_card(junk)
    out = tmp_path / "m.zarr"
    scene = write_raster(tmp_path / "s.tif", np.ones((5, 64, 64), "uint16"), descriptions=BANDS)
    r = runner.invoke(app, ["classify", str(scene), "-o", str(out), "--model", str(plain), "-q"])
    assert r.exit_code == 3 and "no card" in r.output and not out.exists()


def test_load_split_selects_bands_by_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["file,label,split"]
    for i, label in enumerate(["water", "crop", "forest", "water"]):
        arr = rng.integers(1, 5000, (13, 64, 64)).astype("uint16")
        write_raster(tmp_path / f"c{i}.tif", arr)
        rows.append(f"c{i}.tif,{label},{'test' if i % 2 else 'train'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    card = tiny_card()
    x, y = load_split(tmp_path, "test", card)
    assert x.shape == (2, 5, 64, 64) and y.tolist() == [2, 0]
    import rasterio

    with rasterio.open(tmp_path / "c1.tif") as ds:
        raw = ds.read(4)  # B04 is the 4th EuroSAT file band, the card's 3rd
    np.testing.assert_allclose(x[0, 2], (raw * 1e-4 - 0.1) / 0.05, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="split 'val'"):
        load_split(tmp_path, "val", card)


@pytest.mark.slow
@pytest.mark.realdata
def test_eurosat_int8_export_reports_measured_accuracy(data_root: Path, tmp_path: Path) -> None:
    """The packaged bundle's int8 export on EuroSAT (about a minute): accuracy within 5 points."""
    card = read_card(resolve_model("eurosat-13"))
    eurosat = data_root / "eurosat_ms"
    cal = chip_canvases(load_split(eurosat, "train", card)[0])
    rep = export_onnx("eurosat-13", tmp_path / "e.onnx", int8=True, calibration=cal,
                      evaluation=load_split(eurosat, "test", card), speed_runs=3, threads=2)
    assert rep.accuracy["n"] == 100
    assert abs(rep.accuracy["onnx"] - rep.accuracy["fp32_bundle"]) <= 0.05
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "e.onnx")).metadata_props}
    assert json.loads(meta[EXPORT_KEY])["accuracy"] == rep.accuracy
