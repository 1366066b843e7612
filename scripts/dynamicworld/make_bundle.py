"""Build the ``dynamic-world`` bundle from Dynamic World's TensorFlow variables (offline, once).

Step 1 (side environment with TensorFlow) dumps the SavedModel's variables, unchanged::

    /tmp/tfenv/bin/python scripts/dynamicworld/export_tf_variables.py \\
        ../shared/data/pretrained/dynamicworld/model/forward /tmp/dw_tf_variables.safetensors

Step 2 (geofg's environment, no TensorFlow) maps them onto
:class:`geofg.models.inference.dynamicworld.DynamicWorldNet`, checks the port against the published reference
pair (``reference/ref_in.npy`` -> ``ref_out.npy``, TensorFlow's logits) and writes the bundle::

    python scripts/dynamicworld/make_bundle.py /tmp/dw_tf_variables.safetensors \\
        ../shared/data/pretrained/dynamicworld -o geofg/models/bundles/dynamic-world.safetensors

The bundle stores the weights as float32 (231 k parameters, 0.9 MB), the card (bands,
normalisation from ``single_image_runner.ipynb``, classes with Dynamic World's palette, licence,
attribution) and a self-check pair (:data:`geofg.models.inference.predictor.SELFCHECK_KEYS`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from geofg.models.inference.card import ModelCard
from geofg.models.inference.dynamicworld import RECEPTIVE_MARGIN, TF_NAMES, DynamicWorldNet
from geofg.models.inference.registry import publish_bundle

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]
# single_image_runner.ipynb: log(raw * 0.005 + 1), minus the first column, divided by the second
NORM_PERCENTILES = [
    [1.7417268007636313, 2.023298706048351],
    [1.7261204997060209, 2.038905204308012],
    [1.6798346251414997, 2.179592821212937],
    [1.7734969472909623, 2.2890068333026603],
    [2.289154079164943, 2.6171674549378166],
    [2.382939712192371, 2.773418590375327],
    [2.3828939530384052, 2.7578332604178284],
    [2.1952484264967844, 2.789092484314204],
    [1.554812948247501, 2.4140534947492487],
]
# Dynamic World's published palette, in logit order
CLASSES = [
    ("water", "#419bdf"), ("trees", "#397d49"), ("grass", "#88b053"),
    ("flooded_vegetation", "#7a87c6"), ("crops", "#e49635"), ("shrub_and_scrub", "#dfc35a"),
    ("built", "#c4281b"), ("bare", "#a59b8f"), ("snow_and_ice", "#b39fe1"),
]  # fmt: skip
ATTRIBUTION = (
    "Dynamic World model (google/dynamicworld@0dd288f), Copyright 2021 Google LLC, Apache-2.0. "
    "This code is produced for the Dynamic World Project by Google in partnership with National "
    "Geographic and the World Resources Institute. Brown et al. 2022, Scientific Data, "
    "doi 10.1038/s41597-022-01307-4. Ported to torch by geofg (weights converted unchanged)."
)


def torch_state(tf_vars: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map TensorFlow variables onto DynamicWorldNet's state dict (HWIO -> OIHW, HWC1 -> C1HW)."""
    used = {name for name, _ in TF_NAMES.values()}
    extra = sorted(set(tf_vars) - used)
    if extra:
        raise SystemExit(f"unmapped TensorFlow variables: {extra}")
    state = {}
    for key, (name, layout) in TF_NAMES.items():
        a = tf_vars[name]
        if layout == "conv":
            a = a.transpose(3, 2, 0, 1)
        elif layout == "dw":
            a = a.transpose(2, 3, 0, 1)
        state[key] = np.ascontiguousarray(a, dtype=np.float32)
    return state


def selfcheck_pair(net: torch.nn.Module, card: ModelCard) -> dict[str, np.ndarray]:
    """A deterministic raw chip (reflectance-like DN) and the logits the weights give for it."""
    from geofg.batch import normalise

    rng = np.random.default_rng(20170216)
    base = rng.uniform(300, 4000, size=(1, len(card.bands), 1, 1))
    raw = (base * rng.uniform(0.6, 1.4, size=(1, len(card.bands), 32, 32))).astype(np.uint16)
    x = normalise(raw, np.ones((32, 32), bool), card.scale, card.mean, card.std, card.normalisation)
    with torch.inference_mode():
        logits = net(torch.from_numpy(x)).numpy()
    return {"selfcheck.raw": raw, "selfcheck.logits": logits.astype(np.float32)}


def dw_card(**overrides) -> ModelCard:
    """The card of the unchanged Dynamic World weights."""
    fields = dict(  # noqa: C408  (keyword form, as ModelCard(...) reads)
        name="dynamic-world",
        version="1.0.0+0dd288f",
        task="segmentation",
        architecture="dynamic-world",
        encoder="dynamic-world",
        bands=BANDS,
        scale=0.005,
        mean=[p[0] for p in NORM_PERCENTILES],
        std=[p[1] for p in NORM_PERCENTILES],
        normalisation="log-sigmoid",
        processing_levels=["L1C"],
        classes=[{"name": n, "colour": c} for n, c in CLASSES],
        crop_classes=["crops", "grass"],
        tile_multiple=32,
        tile_size=512,
        halo=32,
        resolution_m=10.0,
        training={
            "data": "Dynamic World training set (Brown et al. 2022): ~24,000 expert- and"
                    " non-expert-annotated 510x510 Sentinel-2 L1C tiles, global",
            "source": "google/dynamicworld@0dd288f model/forward (TensorFlow SavedModel)",
            "receptive_margin_px": RECEPTIVE_MARGIN,
        },
        licence="Apache-2.0",
        attribution=ATTRIBUTION,
        made_by="scripts/dynamicworld/make_bundle.py",
        created=dt.date.today().isoformat(),
    )
    fields.update(overrides)
    return ModelCard(**fields)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tf_variables", help="output of export_tf_variables.py")
    ap.add_argument("dw_folder", help="pretrained/dynamicworld (for reference/ref_in.npy, ref_out.npy)")
    ap.add_argument("-o", "--output", required=True, help="bundle path (.safetensors)")
    ap.add_argument("--metrics", default=None, help="JSON file of held-out metrics for the card")
    args = ap.parse_args()

    state = torch_state(load_file(args.tf_variables))
    net = DynamicWorldNet().eval()
    full = {k: torch.from_numpy(v) for k, v in state.items()}
    full |= {k: v for k, v in net.state_dict().items() if k.endswith("num_batches_tracked")}
    net.load_state_dict(full, strict=True)

    ref = Path(args.dw_folder) / "reference"
    x = np.load(ref / "ref_in.npy", allow_pickle=False)  # NHWC, already normalised
    want = np.load(ref / "ref_out.npy", allow_pickle=False)
    with torch.inference_mode():
        got = net(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    diff = float(np.abs(got - want).max())
    print(f"port vs TensorFlow reference logits: max abs diff {diff:.3g}")
    if diff > 1e-4:
        print("the port does not reproduce the reference; not writing a bundle", file=sys.stderr)
        return 1

    import json

    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else {}
    card = dw_card(metrics=metrics)
    tensors = {k: v.numpy() for k, v in net.state_dict().items()} | selfcheck_pair(net, card)
    sha, pinned = publish_bundle(Path(args.output), tensors, card)
    print(f"wrote {args.output} (sha256 {sha}{', pinned in MANIFEST.json' if pinned else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
