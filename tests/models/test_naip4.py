"""The NAIP 4-band model: radiometric map, band-name aliases for indices, the shipped bundle.

scripts/train_naip4.py renders EuroSAT chips (B04, B03, B02, B08) as NAIP uint8 DN through the
inverse of a per-band linear map fitted on band quantiles (geofg.models.inference.radiometry) and trains
``naip-4band`` on them; its card names NAIP's bands R, G, B, NIR.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from geofg.errors import ConfigError
from geofg.models.inference.radiometry import LinearMap, band_quantiles, fit_quantile_map

# --- the radiometric map -----------------------------------------------------------------------


def test_quantile_map_puts_source_anchors_on_target_anchors_and_inverts() -> None:
    rng = np.random.default_rng(0)
    src = [rng.gamma(3.0, 20.0, (4, 5000)), rng.gamma(3.0, 25.0, (4, 3000))]  # two "scenes"
    dst = [rng.gamma(2.0, 700.0, (4, 8000)) + 200]
    qs, qt = band_quantiles(src, [2, 98]), band_quantiles(dst, [2, 98])
    m = fit_quantile_map(qs, qt)
    np.testing.assert_allclose(m.apply(qs.T[:, :, None, None])[:, :, 0, 0], qt.T, rtol=1e-12)
    x = rng.uniform(0, 255, (3, 4, 8, 8))
    np.testing.assert_allclose(m.inverse().apply(m.apply(x)), x, rtol=1e-12, atol=1e-9)
    # pooled quantiles: the scenes' pixels together, not an average of per-scene quantiles
    pooled = np.percentile(np.concatenate(src, axis=1), [2, 98], axis=1).T
    np.testing.assert_allclose(qs, pooled)


def test_linear_map_checks_band_count_and_anchor_order() -> None:
    m = LinearMap((2.0, 3.0), (0.0, 1.0))
    assert m.apply(np.ones((2, 1, 1))).ravel().tolist() == [2.0, 4.0]  # (C, H, W)
    with pytest.raises(ConfigError, match="2 bands, the data 3"):
        m.apply(np.ones((1, 3, 4, 4)))
    with pytest.raises(ConfigError, match="band 0: the anchor quantiles do not increase"):
        fit_quantile_map(np.array([[5.0, 5.0]]), np.array([[100.0, 200.0]]))
    with pytest.raises(ConfigError, match="no valid pixels"):
        band_quantiles([np.zeros((4, 0))], [2, 98])


# --- index bands by generic names -----------------------------------------------------------


def test_naip_band_names_get_the_same_indices_and_network_as_sentinel2_names() -> None:
    pytest.importorskip("torch")
    from geofg.models.training.features import chip_statistics
    from geofg.models.inference.nets import build_model, spectral_index_bands
    from geofg.models.training.train import build_card

    assert spectral_index_bands(["R", "G", "B", "NIR"]) == spectral_index_bands(["B04", "B03", "B02", "B08"])
    assert spectral_index_bands(["B01", "B02", "B03", "B04"]) == []  # no NIR: no index
    x = np.random.default_rng(1).integers(1, 255, (3, 4, 64, 64)).astype(np.uint8)
    np.testing.assert_array_equal(chip_statistics(x, ["R", "G", "B", "NIR"], 1 / 255),
                                  chip_statistics(x, ["B04", "B03", "B02", "B08"], 1 / 255))

    def shapes(bands: list[str]) -> dict[str, tuple]:
        card = build_card(name="t", bands=bands, class_names=["a", "b"], mean=[0.3] * 4, std=[0.1] * 4,
                          scale=1 / 255, encoder="tu-mobilenetv4_conv_small", patch_size=64)
        return {k: tuple(v.shape) for k, v in build_model(card).state_dict().items()}

    naip, s2 = shapes(["R", "G", "B", "NIR"]), shapes(["B04", "B03", "B02", "B08"])
    assert naip == s2 and naip["spectral.0.weight"][1] == 6  # 4 bands + NDVI + NDWI


# --- the shipped bundle ------------------------------------------------------------------------


def _shipped():  # noqa: ANN202
    from geofg.models.inference.bundle import read_card
    from geofg.models.inference.registry import BUNDLE_DIR, manifest

    path = BUNDLE_DIR / "naip-4band.safetensors"
    if not path.is_file():
        pytest.skip("naip-4band bundle not shipped")
    return path, read_card(path), manifest()


def test_shipped_bundle_card_describes_naip_input_and_its_radiometric_map() -> None:
    from geofg.models.inference.bundle import bundle_sha256

    path, card, pins = _shipped()
    assert pins["naip-4band"] == bundle_sha256(path)
    assert path.stat().st_size < 5e6
    assert card.bands == ["R", "G", "B", "NIR"] and card.scale == pytest.approx(1 / 255)
    assert card.resolution_m == 10.0 and card.task == "patch-classification" and len(card.classes) == 10
    rad = card.training["radiometry"]
    m = LinearMap(tuple(rad["gain"]), tuple(rad["offset"]))
    lo_hi_dn = np.asarray(rad["naip_anchor_dn"])  # (bands, 2)
    lo_hi_refl = np.asarray(rad["eurosat_train_anchor_reflectance_x1e4"])
    np.testing.assert_allclose(m.apply(lo_hi_dn.T[:, :, None, None])[:, :, 0, 0], lo_hi_refl.T, rtol=1e-3, atol=0.5)
    assert all(g > 0 for g in rad["gain"])
    # val chose; test was scored once (both in the card), over the spectral-statistics baseline on val
    mt = card.metrics
    assert 0 < mt["val_accuracy"] <= 1 and 0 < mt["test_accuracy"] <= 1
    assert json.loads(json.dumps(mt["test_confusion"]))["classes"] == card.class_names


@pytest.mark.realdata
def test_shipped_bundle_reproduces_its_card_accuracy_on_rendered_eurosat(data_root) -> None:  # noqa: ANN001
    pytest.importorskip("torch")
    from geofg.models.training.chips import ChipSet
    from geofg.models.inference.predictor import load_predictor
    from geofg.models.training.train import EUROSAT_BANDS, evaluate_chips, load_eurosat

    path, card, _ = _shipped()
    folder = data_root / "eurosat_ms"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"EuroSAT chips not found in {folder}")
    rad = card.training["radiometry"]
    to_dn = LinearMap(tuple(rad["gain"]), tuple(rad["offset"])).inverse()
    sel = [EUROSAT_BANDS.index(b) for b in rad["bands"].values()]
    data = load_eurosat(folder)
    pred = load_predictor(path, device="cpu")
    for split in ("val", "test"):
        d = data[split]
        dn = np.clip(np.rint(to_dn.apply(d.x[:, sel].astype(np.float64))), 0, 255).astype(np.uint8)
        m = evaluate_chips(pred.predict, ChipSet(dn, d.y, d.files), card)
        assert m["accuracy"] == pytest.approx(card.metrics[f"{split}_accuracy"], abs=1e-6), split
