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

**Memory in inference.** Written as above, a 1088 x 1088 tile's forward holds 1.5 GB at its peak,
most of it the 144-channel features upsampled to full resolution and their squares. Under
``torch.inference_mode`` / ``no_grad`` (:func:`_lean`) the same network computes the same logits
(within 2e-6 on the default model's 1088 x 1088 tile; the argmax the same) with about 0.6 GB:

* the full-resolution layers run in strips of :data:`STRIP_ROWS` half-resolution rows, each read
  with the rows its filters reach (one input row for the stem, the 4 taps of the downsampling,
  one half-resolution row for the bilinear upsampling), so nothing is computed twice;
* batch norm is folded into the 1x1 convs (one matrix product per sample, no copies of the input
  in another memory layout) or applied in place, and mish runs in place a few channels at a time;
* depthwise convs run 16 channels at a time into one output.

Training, Grad-CAM (autograd on), tracing, ``torch.compile`` and ONNX export run the plain graph.
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


def mish_(x: torch.Tensor, channels: int = 16) -> torch.Tensor:
    """:func:`mish` overwriting ``x`` (the same values), ``channels`` at a time: its temporary is
    that many channels, not three copies of ``x``."""
    for c in range(0, x.shape[1], channels):
        part = x[:, c : c + channels]
        part.mul_(F.softplus(part).tanh_())
    return x


def _eval_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch norm in eval mode as ``x * scale + shift`` per channel."""
    w, b, mean, var = bn.weight, bn.bias, bn.running_mean, bn.running_var
    if w is None or b is None or mean is None or var is None:
        raise ValueError("dynamic-world's batch norms are affine with running statistics")
    scale = w * torch.rsqrt(var + bn.eps)
    return scale, b - mean * scale


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as one matrix product per sample into a fresh output: no copies of
    ``x`` or of the output in another memory layout, as a library convolution makes."""
    n, cin, h, w = x.shape
    cout = weight.shape[0]
    out = x.new_empty((n, cout, h, w))
    for i in range(n):
        torch.addmm(bias[:, None], weight.view(cout, cin), x[i].reshape(cin, h * w),
                    out=out[i].view(cout, h * w))
    return out


def depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, channels: int = 16):
    """A 3x3 depthwise convolution (zero "same" padding), ``channels`` at a time into one
    output: the library's copies of the input and output in its own memory layout are then
    that many channels, not the whole tensor twice."""
    out = x.new_empty(x.shape)
    for c in range(0, x.shape[1], channels):
        part = slice(c, c + channels)
        out[:, part] = F.conv2d(x[:, part], weight[part], bias[part], padding=1,
                                groups=weight[part].shape[0])
    return out


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
        if not _lean():
            return mish(self.bn(self.conv(x)))
        scale, shift = _eval_affine(self.bn)
        bias = self.conv.bias
        assert bias is not None  # every conv of the network has one
        if self.conv.kernel_size == (1, 1):  # the batch norm folded into the weights
            return mish_(pointwise(x, self.conv.weight * scale[:, None, None, None], bias * scale + shift))
        if self.conv.groups > 1:
            y = depthwise(x, self.conv.weight, bias)
        else:
            y = self.conv(x)  # ours to overwrite: the batch norm (eval) and mish in place
        return mish_(y.mul_(scale[:, None, None]).add_(shift[:, None, None]))


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
        if _lean():
            return self.main(x).add_(self.skip(x))
        return self.main(x) + self.skip(x)


def downsample2(x: torch.Tensor) -> torch.Tensor:
    """Antialiased bilinear resize by 1/2, as ``tf.image.resize(..., antialias=True)``.

    For a factor of exactly 1/2 TensorFlow's triangle kernel is the 4-tap filter
    ``[1, 3, 3, 1] / 8`` centred between input pixel pairs; taps outside the image are dropped and
    the remaining weights renormalised (so edges are not darkened). Odd sizes are refused: the
    kernel would change with the scale.
    """
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"dynamic-world needs even tile sizes, found {h}x{w}")
    return _downsample_rows(x, 0, h // 2, h)


def _downsample_rows(x: torch.Tensor, a: int, b: int, h: int) -> torch.Tensor:
    """Rows ``a:b`` of :func:`downsample2` of an image ``h`` rows high, from its rows
    ``max(2a - 1, 0):min(2b + 1, h)`` (``x``): the 4 taps of each output row, and zeros only
    where the image ends."""
    w = x.shape[-1]
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=x.dtype, device=x.device) / 8
    kernel = (taps[:, None] * taps[None, :]).expand(x.shape[1], 1, 4, 4).contiguous()
    pad = (1, 1, int(a == 0), int(b == h // 2))
    out = F.conv2d(F.pad(x, pad), kernel, stride=2, groups=x.shape[1])

    def weight_inside(n: int) -> torch.Tensor:  # per output position: the taps' sum in the image
        ones = F.pad(torch.ones(1, 1, n, dtype=x.dtype, device=x.device), (1, 1))
        return F.conv1d(ones, taps.view(1, 1, 4), stride=2)[0, 0]

    return out / (weight_inside(h)[a:b, None] * weight_inside(w)[None, :])


STRIP_ROWS = 32
"""Half-resolution rows per strip where the lean forward runs the full-resolution layers."""


def _lean() -> bool:
    """True where a forward may overwrite its temporaries and run its full-resolution layers in
    row strips: inference (no autograd), and not while tracing, compiling or exporting, which
    need one graph for every tile size."""
    return not (
        torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
    )


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
        """Logits ``(N, K, H, W)``. In inference (:func:`_lean`) the same values with a third
        of the memory: the full-resolution layers (stem and downsampling; upsampling,
        normalisation and head) run in strips of :data:`STRIP_ROWS` half-resolution rows, each
        read with the rows its filters reach, and the half-resolution blocks overwrite their
        temporaries (the module docstring says how, and what it saves)."""
        if not _lean():
            return self.head(self.features(x))
        h, w = x.shape[-2:]
        s = self._stem_half(x)
        side = self.side(s)
        deep = self.block1(s)
        del s
        deep = self.block2(deep)
        f = torch.cat([deep, side], dim=1)
        del deep, side
        f = self.block3(f)
        return self._head_strips(f, h, w)

    def _stem_half(self, x: torch.Tensor) -> torch.Tensor:
        """``downsample2(self.stem(x))`` strip by strip."""
        n, _, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"dynamic-world needs even tile sizes, found {h}x{w}")
        half = x.new_empty((n, self.stem.conv.out_channels, h // 2, w // 2))
        for a in range(0, h // 2, STRIP_ROWS):
            b = min(a + STRIP_ROWS, h // 2)
            r0, r1 = max(2 * a - 1, 0), min(2 * b + 1, h)  # stem rows the 4 taps read
            i0, i1 = max(r0 - 1, 0), min(r1 + 1, h)  # input rows the 3x3 conv reads
            stem = self.stem(x[:, :, i0:i1])[:, :, r0 - i0 : r1 - i0]
            half[:, :, a:b] = _downsample_rows(stem, a, b, h)
        return half

    def _head_strips(self, f: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``self.head`` of :meth:`features`' tail (upsample, unit length) strip by strip."""
        out = f.new_empty((f.shape[0], self.head.out_channels, h, w))
        head_bias = self.head.bias
        assert head_bias is not None
        h2 = f.shape[2]
        for a in range(0, h2, STRIP_ROWS):
            b = min(a + STRIP_ROWS, h2)
            lo, hi = max(a - 1, 0), min(b + 1, h2)  # bilinear reads one row either side
            up = F.interpolate(f[:, :, lo:hi], size=(2 * (hi - lo), w), mode="bilinear",
                               align_corners=False)[:, :, 2 * (a - lo) : 2 * (b - lo)]
            up = up * torch.rsqrt(torch.clamp((up * up).sum(dim=1, keepdim=True), min=1e-12))
            out[:, :, 2 * a : 2 * b] = pointwise(up, self.head.weight, head_bias)
        return out


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
