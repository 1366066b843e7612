"""Load a bundle into a ready-to-run predictor: normalised batches in, class probabilities out.

The pipeline normalises and pads; a predictor only runs the network::

    predictor = load_predictor("eurosat-13")          # a bundle name or a .safetensors path
    probs = predictor.predict(x)   # x: float32 (N, C, H, W) -> float32 (N, K, H, W), softmax over K

Weights are read only from safetensors (:func:`geofg.models.inference.bundle.load_tensors`), stored as fp16 or
fp32 and cast to float32; ``load_state_dict(strict=True)`` makes any mismatch between the card's
architecture and the file's tensors a :class:`~geofg.errors.WeightsError`.

**CPU** (``device="cpu"``): a plain fp32 forward under ``inference_mode``, nothing else; its
output is bit-identical to ``softmax(model(x))`` (a test pins this).

**CUDA** (``device="cuda[:N]"``), all of it behind that device check:

* the network runs under bf16 autocast (softmax in fp32) with weights and input in
  ``channels_last`` (the layout cuDNN's tensor-core convolutions want);
* raw samples go to the device as they were read (:meth:`TorchPredictor.predict_raw`: uint16
  is half the bytes of float32, uint8 a quarter) with their validity, and are normalised there
  (:func:`normalise_tensor`, the same float32 arithmetic as :func:`geofg.batch.normalise`);
  ``GEOFG_DEVICE_NORMALISE=0`` normalises on the host instead;
* host staging buffers are pinned and reused; host-to-device and device-to-host copies are
  ``non_blocking`` on a dedicated stream, double-buffered, so the copy of sub-batch *i + 1* into
  its pinned slot overlaps the forward of sub-batch *i*;
* a batch larger than fits is split into sub-batches sized by :func:`fit_batch_size` from
  ``torch.cuda.mem_get_info`` and the per-sample footprint measured (peak allocated bytes of a
  1-sample forward) the first time each tile shape is seen;
* ``torch.compile`` is opt-in (``compile=True``), off by default.

Reads and writes overlap compute one level up: the local runner reads units ahead on a thread
pool and writes on a writer thread (:mod:`geofg.runners.local`), so the device only waits on I/O
when reads fall behind. benchmarks/HISTORY.md has the measurements.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from geofg.batch import linear_coefficients, log_sigmoid_coefficients, normalise
from geofg.errors import ConfigError, WeightsError
from geofg.models.inference.bundle import load_tensors, read_card
from geofg.models.inference.card import ModelCard, check_input_batch
from geofg.models.inference.nets import build_model
from geofg.models.inference.registry import resolve_model

__all__ = [
    "Predictor",
    "TorchPredictor",
    "batch_slices",
    "fit_batch_size",
    "load_predictor",
    "normalise_tensor",
    "resolve_device",
]

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """What the pipeline needs from a model."""

    card: ModelCard

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return class probabilities ``(N, K, H, W)`` float32 for a normalised ``(N, C, H, W)``."""
        ...


def resolve_device(device: str = "auto") -> str:
    """Turn ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:N"`` into a usable torch device string.

    Raises:
        ConfigError: CUDA was asked for but is not available, or the name is unknown.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} requested but CUDA is not available (torch"
                f" {torch.__version__}); use --device cpu or --device auto"
            )
        return device
    raise ConfigError(f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


MEMORY_FRACTION = 0.8
"""Share of the device memory free to torch that sub-batches may fill (the rest is headroom for
the allocator's fragmentation and cuDNN workspaces)."""


def fit_batch_size(
    free_bytes: int, per_sample_bytes: int, fraction: float = MEMORY_FRACTION, cap: int = 256
) -> int:
    """Return how many samples fit in ``fraction`` of ``free_bytes``, at most ``cap``; 0 if none.

    Pure arithmetic: the CUDA path feeds it ``torch.cuda.mem_get_info`` (plus the allocator's
    cached but unused bytes) and the peak bytes one sample's forward allocated.

    Args:
        free_bytes: Device bytes available to this process.
        per_sample_bytes: Peak extra bytes of a forward per sample (input, activations, output).
        fraction: Share of ``free_bytes`` to use, in (0, 1].
        cap: Upper bound on the result.

    Raises:
        ValueError: ``per_sample_bytes`` <= 0, ``free_bytes`` < 0, ``fraction`` outside (0, 1]
            or ``cap`` < 1.

    Examples:
        >>> fit_batch_size(10 * 2**30, 2**30)
        8
        >>> fit_batch_size(2**30, 2**31)
        0
        >>> fit_batch_size(80 * 2**30, 2**20, cap=64)
        64
    """
    if per_sample_bytes <= 0 or free_bytes < 0 or not 0 < fraction <= 1 or cap < 1:
        raise ValueError(
            f"expected per_sample_bytes > 0, free_bytes >= 0, 0 < fraction <= 1, cap >= 1; found"
            f" {per_sample_bytes}, {free_bytes}, {fraction}, {cap}"
        )
    return min(cap, int(free_bytes * fraction) // per_sample_bytes)


def batch_slices(n: int, step: int) -> list[slice]:
    """Split ``range(n)`` into consecutive slices of at most ``step`` items.

    Examples:
        >>> batch_slices(5, 2)
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    if n < 0 or step < 1:
        raise ValueError(f"expected n >= 0 and step >= 1, found n={n}, step={step}")
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


class _Slot:
    """One staging slot: reusable host buffers (pinned on CUDA) and the event of its last use."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.buffers: dict[str, torch.Tensor] = {}
        self.event: torch.cuda.Event | None = None

    def view(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
             ) -> torch.Tensor:
        """Return a ``dtype`` view of ``shape`` over the named buffer, growing it if needed."""
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)
            self.buffers[name] = buf
        return buf[:nbytes].view(dtype).view(shape)


DEVICE_RAW_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.int16, np.uint16, np.float32))
"""Sample types the staged path sends to the device as read and normalises there; uint16 travels
as int16 (the same bits) and is widened on the device."""


def normalise_tensor(
    data: torch.Tensor, valid: torch.Tensor, scale: float, mean: list[float] | tuple[float, ...],
    std: list[float] | tuple[float, ...], kind: str = "linear",
) -> torch.Tensor:
    """:func:`geofg.batch.normalise` in torch, on ``data``'s device, in place.

    Args:
        data: float32 ``(N, C, H, W)``, the raw samples as floats; overwritten and returned.
        valid: bool ``(N, H, W)``; invalid pixels become 0 (NaN there never reaches log or exp).

    The float32 operations are numpy's, in the same order, with the same coefficients
    (:func:`geofg.batch.linear_coefficients`): the linear kind gives the same bits on CPU; the
    log-sigmoid kind is within a few units in the last place (torch's ``log1p`` and ``exp``).
    """
    if kind not in ("linear", "log-sigmoid"):
        raise ValueError(f"unknown normalisation {kind!r}; expected 'linear' or 'log-sigmoid'")
    invalid = ~valid[:, None]
    dev = data.device

    def coef(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(dev)

    if kind == "linear":
        a, b = linear_coefficients(scale, mean, std)
        data.mul_(coef(a)).sub_(coef(b))
        return data.masked_fill_(invalid, 0.0)
    shift, gain = log_sigmoid_coefficients(mean, std)
    data.masked_fill_(invalid, 0.0).clamp_min_(0.0).mul_(float(np.float32(scale))).log1p_()
    data.sub_(coef(shift)).mul_(coef(gain)).sub_(1.0)
    data.neg_().exp_().add_(1.0).reciprocal_()  # sigmoid, as numpy computes it
    return data.masked_fill_(invalid, 0.0)


def _widen(data: torch.Tensor, unsigned16: bool) -> torch.Tensor:
    """float32 of raw samples on the device; ``unsigned16``: int16 bits that were uint16."""
    if unsigned16:
        return data.to(torch.int32).bitwise_and_(0xFFFF).float()
    return data.float()


class TorchPredictor:
    """A bundle's network in eval mode on one device.

    Attributes:
        card: The bundle's model card.
        device: The torch device string the network runs on (``"cpu"``, ``"cuda"``, ...).
        path: The bundle file.
        max_batch: Largest sub-batch one forward gets on CUDA; ``None`` sizes it from free device
            memory per tile shape (:func:`fit_batch_size`). Unused on CPU.
    """

    def __init__(
        self,
        card: ModelCard,
        model: torch.nn.Module,
        device: str,
        path: Path,
        max_batch: int | None = None,
        *,
        _staged: bool | None = None,
    ) -> None:
        """Wrap an already loaded network (use :func:`load_predictor`).

        ``_staged`` forces the staged (sub-batched, double-buffered) path on or off; it is on
        exactly for CUDA devices unless a test forces it on CPU, where it runs in fp32 with
        ordinary buffers so its bookkeeping can be checked against the plain path.
        """
        self.card = card
        self.model = model
        self.device = device
        self.path = path
        self.max_batch = max_batch
        self._n_bands = len(card.bands)
        self._n_classes = len(card.classes)
        self._cuda = device.startswith("cuda")
        self._staged = self._cuda if _staged is None else _staged
        self._stream = torch.cuda.Stream(device) if self._cuda else None
        self._slots = (_Slot(self._cuda), _Slot(self._cuda))
        self._fit: dict[tuple[int, int], int] = {}

    def _check(self, x: np.ndarray) -> None:
        check_input_batch(self.card, x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return per-pixel class probabilities.

        Args:
            x: Normalised input, float32 ``(N, C, H, W)`` with ``C == len(card.bands)`` and ``H``,
                ``W`` multiples of ``card.tile_multiple``.

        Returns:
            float32 ``(N, K, H, W)``, softmax over ``K == len(card.classes)``.

        Raises:
            ConfigError: Wrong rank, band count or tile size.
        """
        self._check(x)
        if self._staged:
            return self._predict_staged(x)
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with torch.inference_mode():
            logits = self.model(batch)
            probs = torch.softmax(logits.float(), dim=1)
        return probs.numpy()

    def takes_raw(self, dtype: np.dtype) -> bool:
        """True when :meth:`predict_raw` normalises samples of ``dtype`` where the network runs.

        The staged (CUDA) path does, for :data:`DEVICE_RAW_DTYPES`, unless
        ``GEOFG_DEVICE_NORMALISE=0``; the CPU path normalises on the host
        (:func:`geofg.pipeline.infer_unit`), bit for bit as before.
        """
        return (self._staged and np.dtype(dtype) in DEVICE_RAW_DTYPES
                and os.environ.get("GEOFG_DEVICE_NORMALISE", "1") != "0")

    def predict_raw(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Class probabilities of raw samples, normalised with the card's statistics on the device.

        Args:
            data: The model's bands as read, ``(N, C, H, W)``, one of :data:`DEVICE_RAW_DTYPES`
                (others are normalised on the host first).
            valid: bool ``(N, H, W)``; invalid pixels enter the network as 0, as with
                :func:`geofg.batch.normalise`.

        Returns:
            float32 ``(N, K, H, W)``, as :meth:`predict`.
        """
        self._check(data)
        if valid.shape != (data.shape[0], *data.shape[2:]):
            raise ConfigError(f"predict_raw() expects valid of shape {(data.shape[0], *data.shape[2:])},"
                              f" found {valid.shape}")
        if self.takes_raw(data.dtype):
            return self._predict_staged(data, valid)
        c = self.card
        x = np.stack([normalise(d, v, c.scale, c.mean, c.std, c.normalisation)
                      for d, v in zip(data, valid, strict=True)])
        return self.predict(x)

    @contextlib.contextmanager
    def streams(self, want: int | None = None) -> Iterator[int]:
        """Prepare for ``want`` concurrent :meth:`predict` calls; yield how many to run.

        On CPU the intra-op threads are divided between the streams for the duration (``want``
        None: one stream per thread). Two single-threaded forwards on two cores deliver more
        than one two-threaded forward (benchmarks/HISTORY.md). On CUDA (one stream owns the
        staging buffers) this yields 1.
        """
        if self._staged:
            yield 1
            return
        threads = torch.get_num_threads()
        n = max(1, want or threads)
        torch.set_num_threads(max(1, threads // n))
        try:
            yield n
        finally:
            torch.set_num_threads(threads)

    # --- the staged (CUDA) path ---------------------------------------------------------------

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (fp32) of a batch already on the device."""
        if self._cuda:
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = self.model(batch)
        else:
            logits = self.model(batch)
        return torch.softmax(logits.float(), dim=1)

    def sub_batch(self, height: int, width: int) -> int:
        """Return the sub-batch size for tiles of ``height`` x ``width`` on this device.

        ``max_batch`` when set; on CUDA otherwise :func:`fit_batch_size` of the memory free to
        torch and the peak bytes of a measured 1-sample forward (once per tile shape).

        Raises:
            ConfigError: Not even one tile of this size fits in the device's free memory.
        """
        if self.max_batch is not None or not self._cuda:
            return self.max_batch or 256
        key = (height, width)
        if key not in self._fit:
            self._fit[key] = self._measure_fit(height, width)
        return self._fit[key]

    def _measure_fit(self, height: int, width: int) -> int:
        dev = torch.device(self.device)
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        probe = torch.zeros((1, self._n_bands, height, width), device=dev)
        with torch.inference_mode():
            self._forward(probe)
        torch.cuda.synchronize(dev)
        per_sample = max(1, torch.cuda.max_memory_allocated(dev) - base)
        del probe
        free, _total = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        n = fit_batch_size(free + cached, per_sample)
        if n < 1:
            raise ConfigError(
                f"model {self.card.name!r}: one {height}x{width} tile needs"
                f" {per_sample / 2**20:.0f} MiB on {self.device}, {(free + cached) / 2**20:.0f} MiB"
                " free; use a smaller --chunk or --tile-size"
            )
        log.debug("%s: %dx%d tiles, %.0f MiB per sample, sub-batch %d", self.device, height,
                  width, per_sample / 2**20, n)
        return n

    def _predict_staged(self, x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Run ``x`` in sub-batches through two reusable staging slots.

        Per sub-batch: copy into its slot's (pinned) input buffer, enqueue host-to-device copy,
        forward and device-to-host copy into the slot's output buffer on the side stream, record
        an event. A slot is refilled only after its previous event completed, so filling slot
        *i + 1* on the host overlaps the device work of slot *i*. With ``valid`` (N, H, W), ``x``
        holds raw samples that travel as they are and are normalised on the device
        (:func:`normalise_tensor`).
        """
        n, _, h, w = x.shape
        out = np.empty((n, self._n_classes, h, w), dtype=np.float32)
        pending: deque[tuple[_Slot, slice]] = deque()
        unsigned16 = x.dtype == np.uint16
        host = x.view(np.int16) if unsigned16 else x  # torch copies int16, not always uint16
        kind = torch.from_numpy(host[:0]).dtype
        card = self.card

        def finish() -> None:
            slot, sl = pending.popleft()
            if slot.event is not None:
                slot.event.synchronize()
            out[sl] = slot.view("out", (sl.stop - sl.start, self._n_classes, h, w)).numpy()

        for i, sl in enumerate(batch_slices(n, self.sub_batch(h, w))):
            slot = self._slots[i % 2]
            if len(pending) == 2:
                finish()  # the oldest pending sub-batch used this slot
            m = sl.stop - sl.start
            host_in = slot.view("inp", (m, self._n_bands, h, w), kind)
            host_in.numpy()[...] = host[sl]
            if valid is not None:
                host_valid = slot.view("valid", (m, h, w), torch.bool)
                host_valid.numpy()[...] = valid[sl]
            stream = torch.cuda.stream(self._stream) if self._stream is not None else None
            with stream or contextlib.nullcontext(), torch.inference_mode():
                dev_in = host_in.to(self.device, non_blocking=True)
                if valid is not None:
                    dev_valid = host_valid.to(self.device, non_blocking=True)
                    dev_in = normalise_tensor(_widen(dev_in, unsigned16), dev_valid, card.scale,
                                              card.mean, card.std, card.normalisation)
                probs = self._forward(dev_in)
                host_out = slot.view("out", tuple(probs.shape))
                host_out.copy_(probs, non_blocking=True)
                if self._stream is not None:
                    slot.event = torch.cuda.Event()
                    slot.event.record(self._stream)
            pending.append((slot, sl))
        while pending:
            finish()
        return out

    def __repr__(self) -> str:
        """Describe the predictor (bundle name, architecture, device)."""
        return (f"TorchPredictor({self.card.name!r}, {self.card.architecture}/{self.card.encoder},"
                f" device={self.device!r})")


SELFCHECK_KEYS = ("selfcheck.raw", "selfcheck.logits")
"""Optional bundle tensors: a raw input chip ``(1, C, H, W)`` and the logits the weights give for it
after the card's normalisation. :func:`load_predictor` recomputes them, so a card whose
normalisation (kind, scale, mean, std) or band order no longer matches the weights is refused."""

SELFCHECK_ATOL = 1e-3


def run_selfcheck(bundle: Path, card: ModelCard, model: torch.nn.Module, check: dict) -> None:
    """Recompute a bundle's self-check logits on CPU in float32; raise WeightsError on mismatch."""
    if set(check) != set(SELFCHECK_KEYS):
        raise WeightsError(f"{bundle}: expected both {' and '.join(SELFCHECK_KEYS)}, found only"
                           f" {', '.join(check)}; rebuild the bundle")
    raw, want = np.asarray(check["selfcheck.raw"]), np.asarray(check["selfcheck.logits"], np.float32)
    valid = np.ones(raw.shape[-2:], dtype=bool)
    x = normalise(raw, valid, card.scale, card.mean, card.std, card.normalisation)
    with torch.inference_mode():
        got = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    precision = torch.get_float32_matmul_precision()
    if not diff <= SELFCHECK_ATOL and precision != "highest":
        # another library in this process lowered it (TerraTorch's Clay backbone sets "medium"
        # at import): float32 matmuls then run in bfloat16 or TF32, the weights are not at fault
        raise WeightsError(
            f"{bundle}: expected the self-check logits within {SELFCHECK_ATOL:g}, found a max"
            f" difference of {diff:.3g} with torch's float32 matmul precision at {precision!r}"
            " (set by something else in this process); call"
            " torch.set_float32_matmul_precision('highest') before loading the model"
        )
    if not diff <= SELFCHECK_ATOL:
        raise WeightsError(
            f"{bundle}: expected the card's normalisation ({card.normalisation}, scale"
            f" {card.scale:g}, its mean/std) to give the logits stored with the weights, found a"
            f" max difference of {diff:.3g} (> {SELFCHECK_ATOL:g}); the card's normalisation does"
            " not match the weights; restore the card or rebuild the bundle"
        )


def load_predictor(
    path: str | Path,
    device: str = "auto",
    max_batch: int | None = None,
    compile: bool = False,  # noqa: A002 - the torch name, on purpose
) -> TorchPredictor:
    """Load a bundle (a path or an installed bundle name) into a :class:`TorchPredictor`.

    Args:
        path: ``.safetensors`` bundle path or bundle name (see :mod:`geofg.models.inference.registry`).
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        max_batch: CUDA only: cap on tiles per forward; ``None`` sizes it from free memory.
        compile: Wrap the network in ``torch.compile`` (off by default; the first batch of each
            shape then pays the compilation). Output may differ in the last bits from eager mode.

    Raises:
        UnknownModelError: A name that no installed bundle has.
        UnsafeWeightsFormatError: Not a safetensors file.
        WeightsError: Corrupt file, invalid card, or tensors that do not fit the architecture.
        ConfigError: Unknown architecture or encoder, or CUDA requested but unavailable.
    """
    bundle = resolve_model(path)
    card = read_card(bundle)
    dev = resolve_device(device)
    tensors = load_tensors(bundle)
    model = build_model(card)
    check = {k: tensors.pop(k) for k in SELFCHECK_KEYS if k in tensors}
    state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def _few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        found = "; ".join(
            part for part in (
                f"missing {len(missing)}: {_few(missing)}" if missing else "",
                f"unexpected {len(unexpected)}: {_few(unexpected)}" if unexpected else "",
                f"wrong shape {len(wrong)}: {_few(wrong)}" if wrong else "",
            ) if part
        )
        raise WeightsError(
            f"{bundle}: expected the tensors of {card.architecture}/{card.encoder} with"
            f" {len(card.bands)} bands and {len(card.classes)} classes, found {found};"
            " the weights do not match the card; rebuild the bundle"
        )
    for k, v in state.items():
        if v.is_floating_point():
            state[k] = v.float()
    model.load_state_dict(state, strict=True)
    model = model.float().eval()
    if check:
        run_selfcheck(bundle, card, model, check)
    model = model.to(dev)
    if dev.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    log.debug("loaded %s (%s/%s) on %s%s", bundle, card.architecture, card.encoder, dev,
              " (compiled)" if compile else "")
    return TorchPredictor(card, model, dev, Path(bundle), max_batch)
