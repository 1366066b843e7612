"""The torch networks behind model bundles, and the :data:`ARCHITECTURES` registry.

Every network takes a normalised batch ``x`` of shape ``(N, C, H, W)`` (float32, ``C ==
len(card.bands)``, ``H`` and ``W`` multiples of 32) and returns per-pixel class *logits* of shape
``(N, K, H, W)``; :mod:`geofg.models.inference.predictor` applies the softmax.

``fcn-classifier`` (:class:`DenseChipClassifier`) is a patch classifier made fully convolutional
so that one forward pass over a large tile equals the chip classifier applied on a dense grid of
chips (docs/models.md has the full derivation):

1. *Deep branch*: a segmentation-models-pytorch encoder (any band count via ``in_channels``); its
   deepest features (stride 32) go through a 1x1 conv. The encoder must have no global operation
   (squeeze-excitation, global attention): such layers would make a pixel's output depend on the
   size and content of the whole tile, i.e. on the tiling.
2. *Spectral branch*: per pixel (at stride :data:`SPECTRAL_STRIDE`), the normalised bands plus
   normalised-difference indices (NDVI, NDWI, MNDWI, NDBI, NDRE, from the named bands, on
   reflectance recovered with the card's mean/std) go through two 1x1 convs; the result is averaged
   over each 32x32 cell.
3. Cell features (both branches, concatenated) are averaged over a sliding window of
   ``patch_size / 32`` cells (2x2 for 64-px chips), stride 1, no padding: each window position
   holds exactly the features a chip classifier would pool from the chip under it.
4. A small MLP head (1x1 convs) turns each window into class logits; logits sit at window centres
   (stride 32) and are bilinearly upsampled to pixels; the outer ``16 * (window - 1)`` px of a tile,
   which no full window is centred on, repeat the nearest logits (the halo covers them).

During training on ``patch_size`` chips the window covers the whole chip, so
:meth:`DenseChipClassifier.chip_logits` (global average of cell features + head) and the dense
map (constant over the chip) are the same function.

``fcn-classifier`` is built as :class:`FusionChipClassifier`: the above plus texture features per
cell and a second, linear head on the window's hand-made features (band/index means, stds,
texture), fused with the MLP head by a stored weight (feature fusion + a two-expert ensemble in one
network; ``forward(x)`` is unchanged).

``unet`` is ``smp.Unet`` with the card's encoder, band count and class count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geofg.errors import ConfigError
from geofg.models.inference.card import ModelCard
from geofg.models.inference.dynamicworld import build_dynamic_world

__all__ = [
    "ARCHITECTURES",
    "BAND_ALIASES",
    "SPECTRAL_INDICES",
    "DenseChipClassifier",
    "FusionChipClassifier",
    "build_model",
    "build_unet",
    "spectral_index_bands",
]

REDUCTION = 32
"""Output stride of the deepest encoder features (pixels per cell)."""

SPECTRAL_STRIDE = 4
"""The spectral branch works on 4x4-pixel means (40 m for 10 m input): 16x cheaper, same cells."""

MOMENT_STRIDE = 2
"""Window moments (mean, std) of bands and indices are taken over 2x2-pixel means."""

SPECTRAL_INDICES: dict[str, tuple[str, str]] = {
    "ndvi": ("B08", "B04"),  # vegetation: (NIR - red) / (NIR + red)
    "ndwi": ("B03", "B08"),  # open water (McFeeters): (green - NIR) / (green + NIR)
    "mndwi": ("B03", "B11"),  # water vs built-up: (green - SWIR1) / (green + SWIR1)
    "ndbi": ("B11", "B08"),  # built-up: (SWIR1 - NIR) / (SWIR1 + NIR)
    "ndre": ("B8A", "B05"),  # red edge, chlorophyll: (NIR narrow - RE1) / (NIR narrow + RE1)
}
"""Normalised-difference indices fed to the spectral branch: name -> (band a, band b), (a-b)/(a+b).
An index is used only when the card names both of its bands (or their :data:`BAND_ALIASES`)."""

BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "B02": ("B", "BLUE"),
    "B03": ("G", "GREEN"),
    "B04": ("R", "RED"),
    "B08": ("NIR", "N"),
}
"""Generic names that stand for the Sentinel-2 bands of :data:`SPECTRAL_INDICES` (e.g. NAIP's
``R, G, B, NIR``); matched exactly, after the Sentinel-2 name itself."""


def spectral_index_bands(bands: Sequence[str]) -> list[tuple[str, int, int]]:
    """Return ``(index name, position of band a, position of band b)`` for every usable index.

    Examples:
        >>> spectral_index_bands(["R", "G", "B", "NIR"])
        [('ndvi', 3, 0), ('ndwi', 1, 3)]
    """
    names = list(bands)

    def find(band: str) -> int | None:
        for n in (band, *BAND_ALIASES.get(band, ())):
            if n in names:
                return names.index(n)
        return None

    out = []
    for name, (a, b) in SPECTRAL_INDICES.items():
        ia, ib = find(a), find(b)
        if ia is not None and ib is not None:
            out.append((name, ia, ib))
    return out


DEEP_CHANNELS = 96
SPECTRAL_CHANNELS = 48
HEAD_CHANNELS = 128
HEAD_DROPOUT = 0.3


class DenseChipClassifier(nn.Module):
    """Fully convolutional patch classifier; see the module docstring.

    Args:
        card: The model card (bands, mean/std, classes, encoder, patch_size).
    """

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        n_bands = len(card.bands)
        patch = card.patch_size or 2 * REDUCTION
        if patch % REDUCTION:
            raise ConfigError(
                f"fcn-classifier needs patch_size a multiple of {REDUCTION}, found {patch};"
                " fix the card"
            )
        self.window_cells = patch // REDUCTION
        try:
            self.encoder = smp.encoders.get_encoder(
                card.encoder, in_channels=n_bands, depth=5, weights=None
            )
        except (KeyError, ValueError, RuntimeError) as err:
            raise ConfigError(
                f"unknown or unusable encoder {card.encoder!r} ({err}); use an smp encoder name"
                " such as 'tu-mobilenetv4_conv_small'"
            ) from None
        deep_in = self.encoder.out_channels[-1]
        self.index_pairs = [(ia, ib) for _, ia, ib in spectral_index_bands(card.bands)]
        self.register_buffer(
            "band_mean", torch.tensor(card.mean, dtype=torch.float32).view(1, -1, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "band_std", torch.tensor(card.std, dtype=torch.float32).view(1, -1, 1, 1),
            persistent=False,
        )
        spec_in = n_bands + len(self.index_pairs)
        self.spectral = nn.Sequential(
            nn.Conv2d(spec_in, SPECTRAL_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(SPECTRAL_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv2d(SPECTRAL_CHANNELS, SPECTRAL_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(SPECTRAL_CHANNELS),
            nn.ReLU(inplace=True),
        )
        self.deep = nn.Sequential(
            nn.Conv2d(deep_in, DEEP_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(DEEP_CHANNELS),
            nn.ReLU(inplace=True),
        )
        # BatchNorm on *pooled* features standardises chip-level statistics (they vary much less
        # than pixels do); in eval it is a per-channel affine map, so pooling commutes with it.
        self.n_moments = spec_in
        head_in = DEEP_CHANNELS + SPECTRAL_CHANNELS + 2 * spec_in
        self.head = nn.Sequential(
            nn.BatchNorm2d(head_in),
            nn.Dropout(HEAD_DROPOUT),
            nn.Conv2d(head_in, HEAD_CHANNELS, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(HEAD_DROPOUT),
            nn.Conv2d(HEAD_CHANNELS, len(card.classes), 1),
        )

    def spectral_input(self, x: torch.Tensor) -> torch.Tensor:
        """Return normalised bands plus index channels, shape ``(N, C + n_indices, H, W)``."""
        if not self.index_pairs:
            return x
        refl = x * self.band_std + self.band_mean
        idx = []
        for a, b in self.index_pairs:
            ra, rb = refl[:, a : a + 1], refl[:, b : b + 1]
            idx.append(((ra - rb) / (ra + rb).abs().clamp_min(1e-3)).clamp(-1.0, 1.0))
        return torch.cat([x, *idx], dim=1)

    def cell_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-cell features, shape ``(N, D, H / 32, W / 32)``.

        Channels: deep features, spectral-branch features, then the cell means of the spectral
        input (bands + indices) and of its square (turned into a window std by
        :meth:`window_features`).
        """
        deep = self.deep(self.encoder(x)[-1])
        xs = F.avg_pool2d(x, SPECTRAL_STRIDE) if SPECTRAL_STRIDE > 1 else x
        spec = self.spectral(self.spectral_input(xs))
        spec = F.avg_pool2d(spec, REDUCTION // SPECTRAL_STRIDE)
        xm = F.avg_pool2d(x, MOMENT_STRIDE) if MOMENT_STRIDE > 1 else x
        sm = self.spectral_input(xm)
        m1 = F.avg_pool2d(sm, REDUCTION // MOMENT_STRIDE)
        m2 = F.avg_pool2d(sm * sm, REDUCTION // MOMENT_STRIDE)
        return torch.cat([deep, spec, m1, m2], dim=1)

    def window_features(self, pooled: torch.Tensor) -> torch.Tensor:
        """Turn window-averaged cell features into head input (second moment -> std)."""
        k = self.n_moments
        m1, m2 = pooled[:, -2 * k : -k], pooled[:, -k:]
        std = (m2 - m1 * m1).clamp_min(0.0).add(1e-6).sqrt()
        return torch.cat([pooled[:, : -2 * k], m1, std], dim=1)

    def chip_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Classify whole chips: global mean of cell features -> head; shape ``(N, K)``."""
        cells = self.cell_features(x)
        return self.head(self.window_features(cells.mean(dim=(2, 3), keepdim=True))).flatten(1)

    def window_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of every chip window, ``(N, K, H/32 - k + 1, W/32 - k + 1)``, k = window.

        Window ``(i, j)`` covers cells ``i..i+k-1`` x ``j..j+k-1``, i.e. pixels
        ``32 i .. 32 (i + k)``, and is centred on pixel ``32 i + 16 k``.
        """
        cells = self.cell_features(x)
        kh = min(self.window_cells, cells.shape[-2])
        kw = min(self.window_cells, cells.shape[-1])
        pooled = F.avg_pool2d(cells, (kh, kw), stride=1) if kh * kw > 1 else cells
        return self.head(self.window_features(pooled))

    @staticmethod
    def upsample(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Bilinearly interpolate window logits to pixels ``(N, K, height, width)``.

        Windows sit every 32 px, centred ``16 (k - 1)`` px in from the tile edge: upsample by 32
        half-pixel aligned (``align_corners=False``), then shift by padding ``16 (k - 1)`` px per
        side with the edge values (the margin no full window is centred on).
        """
        out = F.interpolate(logits, scale_factor=REDUCTION, mode="bilinear", align_corners=False)
        pad_h, pad_w = height - out.shape[-2], width - out.shape[-1]
        if pad_h or pad_w:
            out = F.pad(out, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2),
                        mode="replicate")
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return dense per-pixel logits ``(N, K, H, W)`` for a normalised batch ``(N, C, H, W)``."""
        return self.upsample(self.window_logits(x), x.shape[-2], x.shape[-1])


TEXTURE_SCALES = (1, 2, 4)
"""Texture features: mean absolute difference between neighbouring pixels of every band and
index, on the image and on its 2x2 and 4x4 pixel means (edges, roads, rows, roofs, waves)."""


class FusionChipClassifier(DenseChipClassifier):
    """``fcn-classifier`` with hand-made spectral/texture features fused twice (docs/models.md).

    On top of :class:`DenseChipClassifier`: every cell also carries *texture* features (mean
    absolute neighbour difference of bands and indices at the :data:`TEXTURE_SCALES`), which go
    into the MLP head together with the deep, spectral and moment features; and a second,
    *linear* head acts on the window's hand-made features alone (band and index means and stds,
    texture), standardised with stored train-split statistics. The output logits are
    ``(1 - a) * log_softmax(mlp) + a * log_softmax(linear)`` with ``a = fusion_weight``: a
    product-of-experts ensemble of the CNN and a spectral-statistics classifier inside one
    network (``a`` is 0 while the network is trained; the linear head is fitted afterwards as
    L2-regularised logistic regression and ``a`` chosen on val).
    """

    def __init__(self, card: ModelCard) -> None:
        super().__init__(card)
        spec_in = self.n_moments
        self.n_texture = spec_in * len(TEXTURE_SCALES)
        head_in = DEEP_CHANNELS + SPECTRAL_CHANNELS + 2 * spec_in + self.n_texture
        self.head[0] = nn.BatchNorm2d(head_in)
        self.head[2] = nn.Conv2d(head_in, HEAD_CHANNELS, 1)
        n_hand = 2 * spec_in + self.n_texture
        self.linear = nn.Conv2d(n_hand, len(card.classes), 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("hand_mean", torch.zeros(1, n_hand, 1, 1))
        self.register_buffer("hand_std", torch.ones(1, n_hand, 1, 1))
        self.register_buffer("fusion_weight", torch.zeros(()))

    def cell_features(self, x: torch.Tensor) -> torch.Tensor:
        """Parent cell features followed by the texture features (``n_texture`` channels)."""
        base = super().cell_features(x)
        s = self.spectral_input(x)
        tex = []
        for p in TEXTURE_SCALES:
            sp = F.avg_pool2d(s, p) if p > 1 else s
            dx = F.pad((sp[..., :, 1:] - sp[..., :, :-1]).abs(), (0, 1, 0, 0), mode="replicate")
            dy = F.pad((sp[..., 1:, :] - sp[..., :-1, :]).abs(), (0, 0, 0, 1), mode="replicate")
            tex.append(F.avg_pool2d(dx + dy, REDUCTION // p))
        return torch.cat([base, *tex], dim=1)

    def window_features(self, pooled: torch.Tensor) -> torch.Tensor:
        """Head input: parent window features (moments -> std) plus texture."""
        t = self.n_texture
        return torch.cat([super().window_features(pooled[:, :-t]), pooled[:, -t:]], dim=1)

    def hand_features(self, feats: torch.Tensor) -> torch.Tensor:
        """The hand-made part of :meth:`window_features` (means, stds, texture), unscaled."""
        return feats[:, DEEP_CHANNELS + SPECTRAL_CHANNELS :]

    def fuse(self, feats: torch.Tensor) -> torch.Tensor:
        """Combine the MLP head and the linear head on window features ``(N, D, h, w)``."""
        mlp = self.head(feats)
        lin = self.linear((self.hand_features(feats) - self.hand_mean) / self.hand_std)
        # = (1 - a) log_softmax(mlp) + a log_softmax(lin) up to a per-pixel constant (same
        # softmax), exactly ``mlp`` for a = 0, and free of data-dependent branches (ONNX export)
        a = self.fusion_weight
        return mlp + a * (F.log_softmax(lin, dim=1) - F.log_softmax(mlp, dim=1))

    def chip_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Classify whole chips: global mean of cell features -> fused heads; ``(N, K)``."""
        cells = self.cell_features(x)
        return self.fuse(self.window_features(cells.mean(dim=(2, 3), keepdim=True))).flatten(1)

    def window_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Fused logits of every chip window (see :meth:`DenseChipClassifier.window_logits`)."""
        cells = self.cell_features(x)
        kh = min(self.window_cells, cells.shape[-2])
        kw = min(self.window_cells, cells.shape[-1])
        pooled = F.avg_pool2d(cells, (kh, kw), stride=1) if kh * kw > 1 else cells
        return self.fuse(self.window_features(pooled))


def build_unet(card: ModelCard) -> nn.Module:
    """Build ``smp.Unet`` for the card (no pretrained weights are ever downloaded)."""
    import segmentation_models_pytorch as smp

    try:
        return smp.Unet(
            encoder_name=card.encoder,
            encoder_weights=None,
            in_channels=len(card.bands),
            classes=len(card.classes),
            **({"decoder_channels": list(card.decoder_channels)} if card.decoder_channels else {}),
        )
    except (KeyError, ValueError, RuntimeError) as err:
        raise ConfigError(
            f"cannot build unet with encoder {card.encoder!r} ({err}); use an smp encoder name"
        ) from None


ARCHITECTURES: dict[str, Callable[[ModelCard], nn.Module]] = {
    "fcn-classifier": FusionChipClassifier,
    "unet": build_unet,
    "dynamic-world": build_dynamic_world,
}
"""Architecture name (``card.architecture``) -> builder taking the card."""


def build_model(card: ModelCard) -> nn.Module:
    """Build the (untrained) network a card describes.

    Raises:
        ConfigError: ``card.architecture`` is not in :data:`ARCHITECTURES`, or the encoder is
            unknown.
    """
    try:
        builder = ARCHITECTURES[card.architecture]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {card.architecture!r} in model card {card.name!r}; expected one"
            f" of {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    return builder(card)
