"""Model cards, bundle safety (pickles, truncation, hostile headers) and the registry. No torch."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from geofg.errors import (
    ConfigError,
    UnknownModelError,
    UnsafeWeightsFormatError,
    WeightsChecksumError,
    WeightsError,
)
from geofg.models.inference import registry
from geofg.models.inference.bundle import (
    CARD_KEY,
    bundle_sha256,
    load_tensors,
    read_card,
    verify_checksum,
    write_bundle,
)
from geofg.models.inference.card import ClassInfo, ModelCard

BANDS = ["B02", "B03", "B04", "B08"]


def card_kwargs(**over: object) -> dict:
    kw: dict = dict(
        name="toy", version="1", task="patch-classification", architecture="fcn-classifier",
        encoder="tu-mobilenetv4_conv_small", bands=BANDS, scale=1e-4, mean=[0.1] * 4,
        std=[0.05] * 4,
        classes=[ClassInfo(name="water", colour="#0000ff"), ClassInfo(name="crop", colour="#ffcc00")],
        crop_classes=["crop"], tile_size=128, halo=32, patch_size=64,
    )
    kw.update(over)
    return kw


def toy_tensors() -> dict[str, np.ndarray]:
    return {
        "w": np.arange(12, dtype=np.float16).reshape(3, 4),
        "n": np.array(7, dtype=np.int64),  # 0-d, like BatchNorm's num_batches_tracked
    }


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "toy.safetensors"
    write_bundle(path, toy_tensors(), ModelCard(**card_kwargs()))
    return path


# --- cards ----------------------------------------------------------------------------------


def test_card_json_round_trip() -> None:
    card = ModelCard(**card_kwargs(metrics={"test_accuracy": 0.9}))
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert again.class_names == ["water", "crop"]


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"mean": [0.1] * 3}, "one value per band"),
        ({"std": [0.05, 0.05, 0.0, 0.05]}, "std"),
        ({"crop_classes": ["maize"]}, "maize"),
        ({"tile_size": 100}, "tile_size 100"),
        ({"classes": [ClassInfo(name="a", colour="#000000")]}, "at least 2 classes"),
        ({"bands": ["B02", "B02", "B04", "B08"]}, "duplicates"),
        ({"task": "detection"}, "task"),
        ({"colour_map": {}}, "colour_map"),  # extra="forbid"
        ({"name": "has space"}, "name"),
    ],
)
def test_card_validation_errors_are_config_errors(over: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match="invalid model card") as info:
        ModelCard(**card_kwargs(**over))
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_colour_is_rejected() -> None:
    with pytest.raises(ValueError, match="#1f7a1f"):
        ClassInfo(name="x", colour="green")


def test_card_is_frozen() -> None:
    card = ModelCard(**card_kwargs())
    with pytest.raises(ValueError):
        card.name = "other"  # type: ignore[misc]


# --- bundles --------------------------------------------------------------------------------


def test_write_read_round_trip(bundle: Path) -> None:
    assert read_card(bundle) == ModelCard(**card_kwargs())
    tensors = load_tensors(bundle)
    assert tensors["w"].dtype == np.float16 and tensors["w"].shape == (3, 4)
    assert tensors["n"].shape == () and int(tensors["n"]) == 7
    assert not list(bundle.parent.glob("*.partial"))


def test_write_returns_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "b.safetensors"
    sha = write_bundle(path, toy_tensors(), ModelCard(**card_kwargs()))
    assert sha == bundle_sha256(path)
    verify_checksum(path, sha)
    with pytest.raises(WeightsChecksumError, match="expected sha256"):
        verify_checksum(path, "0" * 64)


def test_write_refuses_other_suffix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=".safetensors"):
        write_bundle(tmp_path / "m.pt", toy_tensors(), ModelCard(**card_kwargs()))


class _Canary:
    """Unpickling this creates a file: proof that a pickle was deserialised."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".safetensors"])
def test_pickle_is_refused_before_any_unpickling(tmp_path: Path, suffix: str) -> None:
    canary = tmp_path / "canary"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps({"state_dict": _Canary(str(canary))}, protocol=4))
    with pytest.raises(UnsafeWeightsFormatError, match="pickle"):
        read_card(path)
    with pytest.raises(UnsafeWeightsFormatError):
        load_tensors(path)
    assert not canary.exists()


def test_zip_checkpoint_named_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(UnsafeWeightsFormatError, match="zip"):
        read_card(path)


def test_other_extensions_are_refused(tmp_path: Path, bundle: Path) -> None:
    other = tmp_path / "model.onnx"
    other.write_bytes(bundle.read_bytes())
    with pytest.raises(UnsafeWeightsFormatError, match="only safetensors"):
        read_card(other)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="nope.safetensors.*no such file"):
        read_card(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -3])
def test_truncated_bundle_is_a_weights_error(tmp_path: Path, bundle: Path, keep: int) -> None:
    data = bundle.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(WeightsError, match="cut.safetensors") as info:
        read_card(cut)
    assert not isinstance(info.value, UnsafeWeightsFormatError)
    assert "\n" not in str(info.value)


def _raw_safetensors(header: dict, data: bytes = b"") -> bytes:
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data


def test_header_claiming_huge_tensor_is_refused(tmp_path: Path) -> None:
    card = ModelCard(**card_kwargs()).to_json()
    header = {
        "__metadata__": {CARD_KEY: card},
        "w": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 40_000_000_000]},
    }
    path = tmp_path / "huge.safetensors"
    path.write_bytes(_raw_safetensors(header, b"\0" * 64))
    with pytest.raises(WeightsError, match="huge.safetensors.*'w'"):
        read_card(path)
    with pytest.raises(WeightsError, match="huge.safetensors"):
        load_tensors(path)


def test_header_length_beyond_file(tmp_path: Path) -> None:
    path = tmp_path / "long.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"a": 1}')
    with pytest.raises(WeightsError, match="long.safetensors.*truncated"):
        read_card(path)


def test_bad_json_and_missing_card(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 8) + b"{nojson}")
    with pytest.raises(WeightsError, match="bad.safetensors.*JSON"):
        read_card(bad)
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(_raw_safetensors({"__metadata__": {"x": "y"}}))
    with pytest.raises(WeightsError, match="plain.safetensors.*no card"):
        read_card(plain)


def test_invalid_card_in_bundle(tmp_path: Path) -> None:
    data = json.loads(ModelCard(**card_kwargs()).to_json())
    data["mean"] = [0.1]
    path = tmp_path / "inv.safetensors"
    path.write_bytes(_raw_safetensors({"__metadata__": {CARD_KEY: json.dumps(data)}}))
    with pytest.raises(WeightsError, match="inv.safetensors.*one value per band"):
        read_card(path)


def test_refused_when_torch_unsafe_load_is_enabled(bundle: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(WeightsError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        read_card(bundle)


def test_header_length_starting_with_pickle_byte_is_not_a_pickle(tmp_path: Path) -> None:
    """A valid bundle whose 8-byte header length starts 0x80 0x0N (N in 2..5) must not be mistaken
    for a pickle: the sniffing also checks that the bytes are not a plausible safetensors."""
    for pad in range(0, 700):
        card = ModelCard(**card_kwargs(made_by="x" * pad))
        path = tmp_path / "edge.safetensors"
        write_bundle(path, toy_tensors(), card)
        head = path.read_bytes()[:2]
        if head[0] == 0x80 and 2 <= head[1] <= 5:
            break
    else:
        pytest.fail("could not build a header whose length starts like a pickle")
    assert read_card(path).made_by == "x" * pad


# --- registry -------------------------------------------------------------------------------


@pytest.fixture
def model_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    write_bundle(folder / "alpha-v1.safetensors", toy_tensors(), ModelCard(**card_kwargs(name="alpha")))
    write_bundle(folder / "beta.safetensors", toy_tensors(), ModelCard(**card_kwargs(name="beta")))
    (folder / "broken.safetensors").write_bytes(b"\x80\x04junk")
    monkeypatch.setenv("GEOFG_MODEL_PATH", os.pathsep.join([str(folder), str(tmp_path / "none")]))
    return folder


def test_model_path_discovery(model_path: Path) -> None:
    assert model_path in registry.model_dirs()
    names = {card.name for _, card in registry.list_models()}
    assert {"alpha", "beta"} <= names  # broken.safetensors is skipped, not fatal
    assert registry.resolve_model("alpha") == model_path / "alpha-v1.safetensors"
    assert registry.resolve_model("alpha-v1") == model_path / "alpha-v1.safetensors"


def test_unknown_model_lists_installed(model_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'gamma'; installed: .*alpha, beta"):
        registry.resolve_model("gamma")


def test_paths_pass_through(tmp_path: Path) -> None:
    assert registry.resolve_model("x/y.safetensors") == Path("x/y.safetensors")
    assert registry.resolve_model("model.pt") == Path("model.pt")
    with pytest.raises(UnsafeWeightsFormatError):
        read_card(registry.resolve_model(str(tmp_path / "model.pt")))


def test_shipped_bundle_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "bundles"
    write_bundle(shipped / "toy.safetensors", toy_tensors(), ModelCard(**card_kwargs()))
    (shipped / "MANIFEST.json").write_text(json.dumps({"toy": "ab" * 32}))
    monkeypatch.setattr(registry, "BUNDLE_DIR", shipped)
    monkeypatch.setattr(registry, "MANIFEST_PATH", shipped / "MANIFEST.json")
    with pytest.raises(WeightsChecksumError, match="toy.safetensors"):
        registry.resolve_model("toy")
    with pytest.raises(WeightsChecksumError):
        registry.resolve_model(str(shipped / "toy.safetensors"))
    (shipped / "MANIFEST.json").write_text(
        json.dumps({"toy": bundle_sha256(shipped / "toy.safetensors")}))
    assert registry.resolve_model("toy") == shipped / "toy.safetensors"


def test_packaged_manifest_matches_packaged_bundles() -> None:
    entries = registry.manifest()
    assert registry.DEFAULT_MODEL in entries
    for name, sha in entries.items():
        verify_checksum(registry.BUNDLE_DIR / f"{name}.safetensors", sha)


def test_importing_models_does_not_import_torch() -> None:
    code = ("import sys, geofg.models, geofg.models.inference.registry, geofg.models.inference.bundle, "
            "geofg.models.inference.card; geofg.models.list_models(); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_publish_pins_bundles_written_into_the_shipped_folder_only(tmp_path: Path, monkeypatch) -> None:
    shipped = tmp_path / "bundles"
    shipped.mkdir()
    manifest = shipped / "MANIFEST.json"
    manifest.write_text(json.dumps({"other": "1" * 64}))
    monkeypatch.setattr(registry, "BUNDLE_DIR", shipped)
    monkeypatch.setattr(registry, "MANIFEST_PATH", manifest)

    sha, pinned = registry.publish_bundle(shipped / "toy-v2.safetensors", toy_tensors(),
                                          ModelCard(**card_kwargs()))
    assert pinned and registry.manifest() == {"other": "1" * 64, "toy-v2": sha}  # keyed by stem
    verify_checksum(shipped / "toy-v2.safetensors", sha)

    sha2, pinned2 = registry.publish_bundle(tmp_path / "elsewhere" / "toy.safetensors", toy_tensors(),
                                            ModelCard(**card_kwargs()))
    assert not pinned2 and (tmp_path / "elsewhere" / "toy.safetensors").exists()
    assert "toy" not in registry.manifest()
    assert sha2 == sha  # same tensors and card
