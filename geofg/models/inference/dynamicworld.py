"""Dynamic World's land-cover network, re-implemented in torch (architecture ``dynamic-world``).

Google's Dynamic World (Brown et al. 2022, Scientific Data, doi 10.1038/s41597-022-01307-4;
Apache-2.0, "produced for the Dynamic World Project by Google in partnership with National
Geographic and the World Resources Institute") maps 9 land-cover classes from 9 Sentinel-2 L1C
bands at 10 m. Its published TensorFlow SavedModel (``model/forward``) is this network, written
here from the graph's op sequence (``scripts/dynamicworld/export_tf_variables.py --ops`` prints
it); ``scripts/dynamicworld/make_bundle.py`` converts the weights once into a safetensors bundle.

Network (``x``: ``(N, 9, H, W)`` after :func:`geofg.batch.normalise` with
``normalisation="log-sigmoid"``; H, W even)::

    stem      conv 3x3 9->64, BN, mish                               full resolution
    down      antialiased bilinear resize to (H/2, W/2)               (TF ScaleAndTranslate, triangle)
    block1    [pw 64->96, dw, pw, dw, pw, dw] + pw 64->96 skip        every conv: BN + mish
    block2    [pw 96->144, dw, pw, dw, pw, dw] + pw 96->144 skip
    side      pw 64->48, dw  (on the resized stem)
    block3    concat(block2, side) -> [pw 192->144, dw, pw, dw, pw, dw] + pw 192->144 skip
    up        bilinear to (H, W) (half-pixel centres), L2-normalise channels, conv 1x1 144->9

``pw`` is a 1x1 conv, ``dw`` a 3x3 depthwise conv (zero "same" padding); every conv has a bias and
is followed by batch norm (eps 1e-3) and mish (``x * tanh(softplus(x))``). The output is logits.

**Receptive field.** Nine 3x3 depthwise convs run at half resolution (9 half-res px = 18 px each
side), plus the stem's 3x3 (1 px), the 4-tap downsampling filter (2 px) and the bilinear
upsampling (1 half-res px = 2 px): a pixel's logits depend on input within 23 px (230 m) of it,
so ``RECEPTIVE_MARGIN`` = 23 and a halo of 32 px makes unit edges invisible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geofg.models.inference.card import ModelCard

__all__ = ["RECEPTIVE_MARGIN", "TF_NAMES", "DynamicWorldNet", "build_dynamic_world"]

RECEPTIVE_MARGIN = 23
"""Pixels of input on each side that a pixel's logits depend on (see the module docstring)."""

BN_EPS = 1e-3


def mish(x: torch.Tensor) -> torch.Tensor:
    """``x * tanh(softplus(x))`` as the TensorFlow graph computes it."""
    return x * torch.tanh(F.softplus(x))


class ConvBN(nn.Module):
    """A conv with bias (1x1 pointwise, 3x3 depthwise or 3x3 full), batch norm, mish."""

    def __init__(self, cin: int, cout: int, kind: str) -> None:
        super().__init__()
        if kind == "pw":
            self.conv = nn.Conv2d(cin, cout, 1)
        elif kind == "dw":
            self.conv = nn.Conv2d(cin, cout, 3, padding=1, groups=cin)
        else:
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mish(self.bn(self.conv(x)))


class Block(nn.Module):
    """Three (pointwise, depthwise) pairs plus a pointwise skip, added."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            ConvBN(cin, cout, "pw"), ConvBN(cout, cout, "dw"),
            ConvBN(cout, cout, "pw"), ConvBN(cout, cout, "dw"),
            ConvBN(cout, cout, "pw"), ConvBN(cout, cout, "dw"),
        )  # fmt: skip
        self.skip = ConvBN(cin, cout, "pw")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.skip(x)


def downsample2(x: torch.Tensor) -> torch.Tensor:
    """Antialiased bilinear resize by 1/2, as ``tf.image.resize(..., antialias=True)``.

    For a factor of exactly 1/2 TensorFlow's triangle kernel is the 4-tap filter
    ``[1, 3, 3, 1] / 8`` centred between input pixel pairs; taps outside the image are dropped and
    the remaining weights renormalised (so edges are not darkened). Odd sizes are refused: the
    kernel would change with the scale.
    """
    _, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"dynamic-world needs even tile sizes, found {h}x{w}")
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=x.dtype, device=x.device) / 8
    kernel = (taps[:, None] * taps[None, :]).expand(c, 1, 4, 4).contiguous()
    out = F.conv2d(F.pad(x, (1, 1, 1, 1)), kernel, stride=2, groups=c)

    def weight_inside(n: int) -> torch.Tensor:  # per output position: the taps' sum in the image
        ones = F.pad(torch.ones(1, 1, n, dtype=x.dtype, device=x.device), (1, 1))
        return F.conv1d(ones, taps.view(1, 1, 4), stride=2)[0, 0]

    return out / (weight_inside(h)[:, None] * weight_inside(w)[None, :])


class DynamicWorldNet(nn.Module):
    """Dynamic World's forward network (see the module docstring); returns logits."""

    def __init__(self, in_channels: int = 9, num_classes: int = 9) -> None:
        super().__init__()
        self.stem = ConvBN(in_channels, 64, "full")
        self.block1 = Block(64, 96)
        self.block2 = Block(96, 144)
        self.side = nn.Sequential(ConvBN(64, 48, "pw"), ConvBN(48, 48, "dw"))
        self.block3 = Block(192, 144)
        self.head = nn.Conv2d(144, num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel unit-length features ``(N, 144, H, W)`` that the head reads."""
        h, w = x.shape[-2:]
        s = downsample2(self.stem(x))
        deep = self.block2(self.block1(s))
        f = self.block3(torch.cat([deep, self.side(s)], dim=1))
        f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
        return f * torch.rsqrt(torch.clamp((f * f).sum(dim=1, keepdim=True), min=1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_dynamic_world(card: ModelCard) -> nn.Module:
    """Builder for ``card.architecture == "dynamic-world"`` (any band and class count)."""
    return DynamicWorldNet(len(card.bands), len(card.classes))


def _convbn_names(prefix: str, conv: str, bn: str, depthwise: bool) -> dict[str, tuple[str, str]]:
    kernel = "depthwise_kernel" if depthwise else "kernel"
    return {
        f"{prefix}.conv.weight": (f"{conv}/{kernel}", "dw" if depthwise else "conv"),
        f"{prefix}.conv.bias": (f"{conv}/bias", ""),
        f"{prefix}.bn.weight": (f"{bn}/gamma", ""),
        f"{prefix}.bn.bias": (f"{bn}/beta", ""),
        f"{prefix}.bn.running_mean": (f"{bn}/moving_mean", ""),
        f"{prefix}.bn.running_var": (f"{bn}/moving_variance", ""),
    }


def _block_names(prefix: str, convs: list[int], dws: list[int], bns: list[int], skip: int):
    names: dict[str, tuple[str, str]] = {}
    for i in range(3):
        names |= _convbn_names(
            f"{prefix}.main.{2 * i}", f"conv2d_{convs[i]}", f"batch_normalization_{bns[2 * i]}", False
        )
        names |= _convbn_names(
            f"{prefix}.main.{2 * i + 1}",
            f"depthwise_conv2d_{dws[i]}",
            f"batch_normalization_{bns[2 * i + 1]}",
            True,
        )
    names |= _convbn_names(f"{prefix}.skip", f"conv2d_{skip}", f"batch_normalization_{bns[6]}", False)
    return names


TF_NAMES: dict[str, tuple[str, str]] = {
    **_convbn_names("stem", "conv2d", "batch_normalization", False),
    **_block_names("block1", [2, 3, 4], [1, 2, 3], [3, 4, 5, 6, 7, 8, 9], 5),
    **_block_names("block2", [6, 7, 8], [4, 5, 6], [10, 11, 12, 13, 14, 15, 16], 9),
    **_convbn_names("side.0", "conv2d_1", "batch_normalization_1", False),
    **_convbn_names("side.1", "depthwise_conv2d", "batch_normalization_2", True),
    **_block_names("block3", [10, 11, 12], [7, 8, 9], [17, 18, 19, 20, 21, 22, 23], 13),
    "head.weight": ("conv2d_14/kernel", "conv"),
    "head.bias": ("conv2d_14/bias", ""),
}
"""torch state-dict key -> (TensorFlow variable name, layout: "conv" HWIO, "dw" HWC1, "" as is)."""
