"""Dump Dynamic World's TensorFlow SavedModel variables to a plain safetensors file (offline, once).

Runs in a *side* virtual environment with TensorFlow (never a geofg dependency):

    python3.11 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu safetensors
    /tmp/tfenv/bin/python scripts/dynamicworld/export_tf_variables.py \
        ../shared/data/pretrained/dynamicworld/model/forward /tmp/dw_tf_variables.safetensors

The output holds every variable of ``model/forward`` under its TensorFlow name (``conv2d_2/kernel``,
``batch_normalization_3/moving_mean``, ...) as float32, unchanged; ``make_bundle.py`` maps them onto
:class:`geofg.models.inference.dynamicworld.DynamicWorldNet` in the geofg environment. It also prints the
op sequence of the serving graph (so a reviewer can check the port against it) and, given
``--check IN.npy OUT.npy``, the max abs difference of TensorFlow's own logits to a reference.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("saved_model", help="path of the SavedModel folder (model/forward)")
    ap.add_argument("out", help="output .safetensors of the raw TensorFlow variables")
    ap.add_argument("--check", nargs=2, metavar=("IN_NPY", "OUT_NPY"), help="reference pair")
    ap.add_argument("--ops", action="store_true", help="print the serving graph's compute ops")
    args = ap.parse_args()

    import tensorflow as tf  # side environment only
    from safetensors.numpy import save_file

    model = tf.saved_model.load(args.saved_model)
    tensors = {}
    for var in model.variables:
        name = var.name.removesuffix(":0")
        if name in tensors:
            print(f"duplicate variable name {name}", file=sys.stderr)
            return 1
        tensors[name] = np.ascontiguousarray(var.numpy().astype(np.float32))
    save_file(tensors, args.out, metadata={"source": args.saved_model, "tensorflow": tf.__version__})
    print(f"wrote {len(tensors)} variables to {args.out}")

    if args.ops:
        from tensorflow.python.framework import convert_to_constants

        fn = model.signatures["serving_default"]
        graph = convert_to_constants.convert_variables_to_constants_v2(fn).graph.as_graph_def()
        skip = {"Const", "Identity", "NoOp", "Shape", "StridedSlice", "Cast", "RealDiv"}
        for node in graph.node:
            if node.op not in skip:
                print(node.op, node.name.split("functional_1/")[-1])

    if args.check:
        x = np.load(args.check[0], allow_pickle=False)
        ref = np.load(args.check[1], allow_pickle=False)
        got = model.signatures["serving_default"](tf.constant(x, tf.float32))
        got = next(iter(got.values())).numpy()
        print(f"TensorFlow vs reference logits: max abs diff {np.abs(got - ref).max():.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
