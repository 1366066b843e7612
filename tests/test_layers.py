"""The per-unit layers: class, confidence and index-based health, and the normalisation before them.

These run once per unit on the compute threads, so they are written for speed (one pass per
class, no strided reductions); the tests pin them to the plain numpy formulas they replace.
"""

from __future__ import annotations

import numpy as np
import pytest

from geofg.batch import normalise
from geofg.health import FILL, band_roles, decode_index, health_layer, health_zones, index_layers, quantise_index
from geofg.models.inference.tiny import tiny_card
from geofg.pipeline import CONFIDENCE_SCALE, layers_from_probs

S2 = ["B02", "B03", "B04", "B05", "B08", "B11"]
ROLES = band_roles(S2)


def _pixels(nir: int, red: int, rededge: int = 0, swir: int = 0) -> np.ndarray:
    """One pixel (C, 1, 1) in S2 band order with the given reflectances."""
    px = np.zeros((len(S2), 1, 1), dtype=np.uint16)
    px[S2.index("B08")], px[S2.index("B04")] = nir, red
    px[S2.index("B05")], px[S2.index("B11")] = rededge, swir
    return px


@pytest.mark.parametrize(("nir", "red", "rededge", "swir", "zone"), [
    (1000, 1000, 0, 0, 0),        # NDVI 0: bare/stressed
    (1500, 1000, 0, 0, 0),        # NDVI exactly 0.2, the low edge: float32 rounding decides (below)
    (1600, 1000, 0, 0, 1),        # NDVI 0.23: low
    (2400, 1000, 0, 0, 2),        # NDVI 0.41: moderate
    (4000, 1000, 0, 0, 3),        # NDVI 0.6: vigorous (edge inclusive)
    (4000, 1000, 0, 6000, 2),     # vigorous but dry canopy (NDMI -0.2): one zone lower
    (2400, 1000, 0, 6000, 1),     # moderate and dry: low
    (1600, 1000, 0, 6000, 1),     # low stays low when dry
    (4000, 1000, 3500, 0, 2),     # vigorous with weak red-edge signal (NDRE 0.07): moderate
    (4000, 1000, 2000, 0, 3),     # NDRE 0.33: stays vigorous
    (0, 0, 0, 0, 0),              # no signal at all: index 0, bare
])
def test_health_zones_follow_the_documented_thresholds(nir, red, rededge, swir, zone) -> None:
    got = health_zones(_pixels(nir, red, rededge, swir), ROLES)
    ndvi = (nir - red) / (nir + red) if nir + red else 0.0
    if abs(ndvi - 0.2) < 1e-9:  # float32 rounding of 0.2 decides this edge; pin what geofg does
        zone = int(np.float32(ndvi) >= np.float32(0.2))
    assert got is not None and int(got[0, 0]) == zone


def test_health_only_inside_crop_classes_and_fill_without_red_nir() -> None:
    data = np.concatenate([_pixels(4000, 1000)] * 3, axis=2)  # three vigorous pixels
    classes = np.array([[0, 1, 2]], dtype=np.uint8)
    assert health_layer(data, classes, [1], ROLES).tolist() == [[FILL, 3, FILL]]
    assert health_layer(data, classes, [], ROLES).tolist() == [[FILL] * 3]
    assert health_layer(data, classes, [1], band_roles(["B02", "B03"])).tolist() == [[FILL] * 3]
    assert health_zones(data, band_roles(["B02", "B03"])) is None


def _reference_layers(probs, raw, valid, crop_ids):  # the plain formulas the fast ones replace
    cls = probs.argmax(axis=0).astype(np.uint8)
    conf = np.rint(probs.max(axis=0) * CONFIDENCE_SCALE).clip(0, CONFIDENCE_SCALE).astype(np.uint8)
    health = np.full(cls.shape, FILL, np.uint8)
    zone = health_zones(raw, ROLES)
    crop = np.isin(cls, crop_ids)
    health[crop] = zone[crop]
    for layer in (cls, conf, health):
        layer[~valid] = FILL
    return cls, conf, health


@pytest.mark.parametrize("all_valid", [True, False])
def test_layers_match_argmax_max_and_zones_with_ties_and_invalid_pixels(all_valid: bool) -> None:
    rng = np.random.default_rng(7)
    k, h, w = 5, 48, 40
    logits = rng.normal(size=(k, h, w)).astype(np.float32)
    logits[:, :8] = np.round(logits[:, :8])  # many exact ties between classes
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    raw = rng.integers(1, 6000, size=(len(S2), h, w)).astype(np.uint16)
    valid = np.ones((h, w), bool) if all_valid else rng.random((h, w)) > 0.2
    card = tiny_card(S2, [f"c{i}" for i in range(k)], crop_classes=["c1", "c3"])

    layers, stats = layers_from_probs(probs, raw, valid, card)

    cls, conf, health = _reference_layers(probs, raw, valid, [1, 3])
    np.testing.assert_array_equal(layers["class"], cls)
    np.testing.assert_array_equal(layers["confidence"], conf)
    np.testing.assert_array_equal(layers["health"], health)
    assert stats["valid_px"] == int(valid.sum())
    assert stats["class_counts"] == np.bincount(cls[valid], minlength=k).tolist()
    assert stats["health_counts"] == np.bincount(health[health != FILL], minlength=4).tolist()
    assert stats["confidence_sum"] == int(conf[valid].sum())
    assert sum(stats["class_counts"]) == stats["valid_px"]
    red, nir = raw[S2.index("B04")].astype(np.float64), raw[S2.index("B08")].astype(np.float64)
    ndvi = np.where(valid, np.floor((nir - red) / (nir + red) * 100 + 100.5), FILL)  # every class
    np.testing.assert_array_equal(layers["ndvi"], ndvi.astype(np.uint8))


def test_the_index_layer_is_ndvi_quantised_to_hundredths_on_every_clear_pixel_in_and_out_of_season() -> None:
    """``ndvi`` = round((NDVI + 1) x 100): 0..200, 255 where no data, masked or red + NIR is 0."""
    assert quantise_index(np.array([-1.0, -0.994, -0.006, 0.0, 0.2, 0.6049, 0.6051, 1.0])).tolist() == \
        [0, 1, 99, 100, 120, 160, 161, 200]  # fmt: skip
    np.testing.assert_allclose(decode_index(np.array([0, 100, 175, 200, 255], np.uint8)),
                               [-1.0, 0.0, 0.75, 1.0, np.nan])  # fmt: skip
    data = np.concatenate([_pixels(4000, 1000), _pixels(1000, 3000), _pixels(0, 0), _pixels(2400, 1000)], axis=2)
    probs = np.zeros((2, 1, 4), np.float32)
    probs[1, 0, :2] = probs[0, 0, 2:] = 1.0  # crop, crop, other, other
    card = tiny_card(S2, ["other", "crop"], crop_classes=["crop"])
    valid = np.ones((1, 4), bool)
    mask = np.array([[0, 0, 0, 1]], np.uint8)  # the last pixel is cloud
    for assess in (True, False):
        layers, _ = layers_from_probs(probs, data, valid, card, mask, assess_health=assess)
        assert layers["ndvi"].tolist() == [[160, 50, FILL, FILL]]  # 0.6, -0.5, no signal, cloud
        assert layers["health"].tolist() == ([[3, 0, FILL, FILL]] if assess else [[FILL] * 4])
    assert index_layers(["B02", "B03", "B04", "B08"]) == ("ndvi",) and index_layers(["B02", "B03"]) == ()
    no_nir = tiny_card(["B02", "B03"], ["other", "crop"], crop_classes=["crop"])
    layers, _ = layers_from_probs(probs, data[:2], valid, no_nir)
    assert set(layers) == {"class", "health", "confidence"}


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int16, np.float64])
def test_normalise_equals_cast_then_scale(dtype) -> None:
    rng = np.random.default_rng(3)
    data = (rng.random((3, 20, 30)) * 40000).astype(dtype)
    valid = rng.random((20, 30)) > 0.1
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.125]
    got = normalise(data, valid, 1e-4, mean, std)
    a = (np.float32(1e-4) / np.asarray(std, np.float32)).reshape(3, 1, 1)
    b = (np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(3, 1, 1)
    want = data.astype(np.float32) * a - b
    want[:, ~valid] = 0
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
