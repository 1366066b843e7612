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
``torch.inference_mode`` / ``no_grad`` on a CPU (:func:`_lean`) the same network computes the
same logits (within 2e-6 on the default model's 1088 x 1088 tile; the argmax the same) in about
0.35 GB of reused memory plus strip-sized temporaries:

* the full-resolution layers run in strips of :data:`STRIP_ROWS` half-resolution rows, each read
  with the rows its filters reach (one input row for the stem, the 4 taps of the downsampling,
  one half-resolution row for the bilinear upsampling), so nothing is computed twice;
* batch norm is folded into the 1x1 convs (matrix products per sample, no copies of the input
  in another memory layout; block 3 reads block 2's and the side branch's outputs without
  concatenating them) or applied in place; mish runs in place a few channels at a time;
  depthwise convs run 16 channels at a time into one output;
* the half-resolution tensors are views of one per-thread :class:`Workspace`, reused from tile
  to tile, so the process heap (which geofg never shrinks, :mod:`geofg.memory`) does not
  fragment around them;
* a tile whose workspace would pass :data:`WORKSPACE_BYTES` runs in row bands that read the
  receptive margin beyond what they keep (:meth:`DynamicWorldNet.row_bands`): the default
  unit's 1088-row tile in two bands, 4.4 % more rows computed.

Training, Grad-CAM (autograd on), tracing, ``torch.compile`` and ONNX export run the plain graph.
"""

from __future__ import annotations

import math
import os
import threading
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from geofg.errors import ConfigError
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


def pointwise(parts: list[torch.Tensor] | torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution of the concatenation of ``parts`` along channels, as matrix products per
    sample into ``out`` (default a new tensor): no concatenation, and no copies of the input or
    output in another memory layout, as a library convolution makes."""
    if isinstance(parts, torch.Tensor):
        parts = [parts]
    n, _, h, w = parts[0].shape
    cout = weight.shape[0]
    w2 = weight.view(cout, -1)
    out = parts[0].new_empty((n, cout, h, w)) if out is None else out
    for i in range(n):
        o = out[i].view(cout, h * w)
        c = 0
        for j, part in enumerate(parts):
            k = part.shape[1]
            x = part[i].reshape(k, h * w)
            if j == 0:
                torch.addmm(bias[:, None], w2[:, c : c + k], x, out=o)
            else:
                o.addmm_(w2[:, c : c + k], x)
            c += k
    return out


def depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              out: torch.Tensor | None = None, channels: int = 16) -> torch.Tensor:
    """A 3x3 depthwise convolution (zero "same" padding), ``channels`` at a time into ``out``
    (default a new tensor): the library's copies of the input and output in its own memory
    layout are then that many channels, not the whole tensor twice."""
    out = x.new_empty(x.shape) if out is None else out
    for c in range(0, x.shape[1], channels):
        part = slice(c, c + channels)
        out[:, part] = F.conv2d(x[:, part], weight[part], bias[part], padding=1,
                                groups=weight[part].shape[0])
    return out


class Workspace:
    """Memory the lean forward reuses from one tile to the next for its half-resolution tensors.

    A forward takes and gives back a few tensors of tens to hundreds of MB each, in the same
    order every tile. Taken from the process heap they leave it fragmented (the heap geofg
    reuses, :mod:`geofg.memory`, never shrinks): on a bare 1088 x 1088 forward the heap grew to
    1.6 times what was live at once. Here they are views of one buffer, placed first-fit, sized
    before the first forward (:meth:`DynamicWorldNet.workspace_elements`); a forward that still
    needs more gets ordinary tensors for the rest, and the next forward's :meth:`start` grows
    the buffer to that high-water mark. One per thread (:func:`workspace`): two compute streams never share one.
    """

    def __init__(self) -> None:
        self.buffer = torch.empty(0)
        self._taken: dict[int, tuple[int, int]] = {}  # data_ptr -> (offset, numel), virtual
        self._high = 0

    def take(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device."""
        numel = math.prod(shape)
        gaps, end = [], 0  # (size, offset) of the free gaps between taken ranges
        for start, n in sorted(self._taken.values()):
            if start - end >= numel:
                gaps.append((start - end, end))
            end = max(end, start + n)
        off = min(gaps)[1] if gaps else end  # best fit, else past the last taken range
        self._high = max(self._high, off + numel)
        buf = self.buffer
        if off + numel <= buf.numel() and buf.dtype == like.dtype and buf.device == like.device:
            t = buf[off : off + numel].view(shape)
        else:
            t = like.new_empty(shape)
        self._taken[t.data_ptr()] = (off, numel)
        return t

    def give(self, t: torch.Tensor) -> None:
        """Return a tensor from :meth:`take`; it must not be used after."""
        del self._taken[t.data_ptr()]

    def start(self, like: torch.Tensor, need: int = 0) -> None:
        """Before a forward: forget what the last one took, and grow the buffer to ``need``
        elements or the last forward's high-water mark (its own tensors are gone by now)."""
        self._taken.clear()
        buf = self.buffer
        want = max(need, self._high)
        if want > buf.numel() or buf.dtype != like.dtype or buf.device != like.device:
            self.buffer = torch.empty(0)
            self.buffer = like.new_empty(max(want, buf.numel()))
        self._high = 0

    @property
    def high(self) -> int:
        """Elements the forward so far would have needed from the buffer."""
        return self._high


_workspaces = threading.local()


def workspace() -> Workspace:
    """This thread's :class:`Workspace` (all models the thread runs share it: it holds one
    forward's tensors at a time)."""
    ws = getattr(_workspaces, "ws", None)
    if ws is None:
        ws = _workspaces.ws = Workspace()
    return ws


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

    def lean(self, parts: list[torch.Tensor] | torch.Tensor, ws: Workspace | None = None) -> torch.Tensor:
        """:meth:`forward` in inference, into a tensor of ``ws`` where given (1x1 and depthwise
        convs), with the batch norm folded (1x1) or in place and mish in place. A 1x1 conv reads
        the concatenation of ``parts`` without making it."""
        if isinstance(parts, torch.Tensor):
            parts = [parts]
        scale, shift = _eval_affine(self.bn)
        bias = self.conv.bias
        assert bias is not None  # every conv of the network has one
        x = parts[0]
        n, _, h, w = x.shape
        out = ws.take((n, self.conv.out_channels, h, w), x) if ws is not None else None
        if self.conv.kernel_size == (1, 1):  # the batch norm folded into the weights
            weight = self.conv.weight * scale[:, None, None, None]
            return mish_(pointwise(parts, weight, bias * scale + shift, out))
        if len(parts) != 1:
            raise ValueError("only a 1x1 conv reads a concatenation in parts")
        if self.conv.groups > 1:
            y = depthwise(x, self.conv.weight, bias, out)
        else:
            y = self.conv(x)
        return mish_(y.mul_(scale[:, None, None]).add_(shift[:, None, None]))


def _convbns(seq: nn.Sequential) -> list[ConvBN]:
    return [cast(ConvBN, m) for m in seq]


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

    def lean(self, parts: list[torch.Tensor], ws: Workspace) -> torch.Tensor:
        """:meth:`forward` in inference of the concatenation of ``parts`` (taken from ``ws``,
        given back as soon as the skip and the first conv have read them), into ``ws``."""
        layers = _convbns(self.main)
        skip = self.skip.lean(parts, ws)
        y = layers[0].lean(parts, ws)
        for part in parts:
            ws.give(part)
        for layer in layers[1:]:
            z = layer.lean([y], ws)
            ws.give(y)
            y = z
        y.add_(skip)
        ws.give(skip)
        return y


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

WORKSPACE_BYTES = 384 * 2**20
"""The most workspace one lean forward takes (:meth:`DynamicWorldNet.row_bands`): a 1088 x 1088
tile (the default unit's) needs 668 MB whole, 349 MB in two bands for 4.4 % more rows computed.
``GEOFG_DW_WORKSPACE_MB`` overrides it (docs/performance.md)."""

BAND_MARGIN = RECEPTIVE_MARGIN + RECEPTIVE_MARGIN % 2
"""Rows a band reads beyond the rows it keeps: the receptive field, rounded up to even."""


def workspace_bytes() -> int:
    """:data:`WORKSPACE_BYTES`, or ``GEOFG_DW_WORKSPACE_MB`` MiB where set (0: no bands).

    Raises:
        ConfigError: ``GEOFG_DW_WORKSPACE_MB`` is not a whole number of MiB, 0 or more.
    """
    text = os.environ.get("GEOFG_DW_WORKSPACE_MB")
    if text is None:
        return WORKSPACE_BYTES
    if not text.strip().isdigit():
        raise ConfigError(f"GEOFG_DW_WORKSPACE_MB: expected a whole number of MiB (0: no limit),"
                          f" found {text!r}; set it to e.g. 384 or unset it")
    mb = int(text)
    return mb * 2**20 if mb > 0 else 2**62


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
        self._ws_channels: int | None = None  # workspace_elements' channel count, once known

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel unit-length features ``(N, 144, H, W)`` that the head reads."""
        h, w = x.shape[-2:]
        s = downsample2(self.stem(x))
        deep = self.block2(self.block1(s))
        f = self.block3(torch.cat([deep, self.side(s)], dim=1))
        f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
        return f * torch.rsqrt(torch.clamp((f * f).sum(dim=1, keepdim=True), min=1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K, H, W)``. In inference on a CPU (:func:`_lean`) the same values in a
        fraction of the memory (the module docstring says how, and what it saves)."""
        if not _lean() or x.device.type != "cpu":
            return self.head(self.features(x))
        bands = self.row_bands(x.shape, x.element_size())
        if len(bands) == 1:
            return self._band(x)
        n, _, h, w = x.shape
        out = x.new_empty((n, self.head.out_channels, h, w))
        for i0, i1, k0, k1 in bands:
            out[:, :, k0:k1] = self._band(x[:, :, i0:i1])[:, :, k0 - i0 : k1 - i0]
        return out

    def _band(self, x: torch.Tensor) -> torch.Tensor:
        """The lean forward of ``x`` in this thread's workspace, sized for it first."""
        ws = workspace()
        ws.start(x, self.workspace_elements(x.shape))
        return self._lean_forward(x, ws)

    def row_bands(self, shape: torch.Size | tuple[int, ...], itemsize: int = 4) -> list[tuple[int, int, int, int]]:
        """How the lean forward cuts an input of ``shape`` into row bands to keep its workspace
        within :data:`WORKSPACE_BYTES`: ``(first, end)`` input rows and ``(first, end)`` output
        rows it keeps, per band. A band reads :data:`BAND_MARGIN` rows beyond the rows it keeps
        (the receptive field), at even offsets (the half-resolution grid stays the tile's), so
        the kept logits are those of the whole tile; the margins are computed twice.

        Examples:
            >>> DynamicWorldNet().row_bands((1, 9, 1088, 1088))  # 349 MB each, 4.4 % more rows
            [(0, 568, 0, 544), (520, 1088, 544, 1088)]
        """
        n, _, h, w = shape
        budget = workspace_bytes()
        k = 1
        while True:
            core = -(-h // k)
            core += core % 2
            rows = min(h, core + 2 * BAND_MARGIN)
            if core <= max(2 * BAND_MARGIN, 2) or self.workspace_elements((n, 0, rows, w)) * itemsize <= budget:
                break
            k += 1
        if k == 1:
            return [(0, h, 0, h)]
        bands = []
        for k0 in range(0, h, core):
            k1 = min(k0 + core, h)
            bands.append((max(k0 - BAND_MARGIN, 0), min(k1 + BAND_MARGIN, h), k0, k1))
        return bands

    def _lean_forward(self, x: torch.Tensor, ws: Workspace) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self._stem_half(x, ws)
        side0, side1 = _convbns(self.side)
        t = side0.lean(s, ws)
        side = side1.lean(t, ws)
        ws.give(t)
        deep = self.block1.lean([s], ws)  # gives s back
        deep = self.block2.lean([deep], ws)
        f = self.block3.lean([deep, side], ws)  # their concatenation, never made
        out = self._head_strips(f, h, w)
        ws.give(f)
        return out

    def workspace_elements(self, shape: torch.Size | tuple[int, ...]) -> int:
        """Elements of :class:`Workspace` the lean forward of an input of ``shape`` needs.

        Every tensor it takes is ``N x channels x H/2 x W/2`` and the order is the same for
        every size, so the need is ``N * H/2 * W/2`` times a channel count, measured once on a
        32 x 32 input.
        """
        if self._ws_channels is None:
            probe, tiny = Workspace(), torch.zeros(1, self.stem.conv.in_channels, 32, 32)
            with torch.inference_mode():
                self._lean_forward(tiny, probe)
            self._ws_channels = -(-probe.high // (16 * 16))
        n, _, h, w = shape
        return self._ws_channels * n * (h // 2) * (w // 2)

    def _stem_half(self, x: torch.Tensor, ws: Workspace) -> torch.Tensor:
        """``downsample2(self.stem(x))`` strip by strip, into ``ws``."""
        n, _, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"dynamic-world needs even tile sizes, found {h}x{w}")
        half = ws.take((n, self.stem.conv.out_channels, h // 2, w // 2), x)
        for a in range(0, h // 2, STRIP_ROWS):
            b = min(a + STRIP_ROWS, h // 2)
            r0, r1 = max(2 * a - 1, 0), min(2 * b + 1, h)  # stem rows the 4 taps read
            i0, i1 = max(r0 - 1, 0), min(r1 + 1, h)  # input rows the 3x3 conv reads
            stem = self.stem.lean(x[:, :, i0:i1])[:, :, r0 - i0 : r1 - i0]
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
