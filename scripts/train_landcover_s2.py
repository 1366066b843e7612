"""Re-create ``landcover-s2``, geofg's default land-cover model: Dynamic World fine-tuned.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_landcover_s2.py --out-dir /tmp/lc \
        --bundle geofg/models/bundles/landcover-s2.safetensors

Start: the ``dynamic-world`` bundle (Google's globally trained network, 9 L1C bands, 9 classes;
scripts/dynamicworld/). Legend: Dynamic World's nine classes, unchanged, so users read the map as
they read Dynamic World's. What it learns from (docs/models.md, "landcover-s2", has the reasons):

1. **OSM labels of the T33UUU scene, west part only.** The 1536 x 768 px scene is split into
   vertical blocks: columns 0-703 train, 704-767 a gap, 768-959 validation (the step is chosen
   there), 960-1023 a gap, 1024-1535 (east) held out and scored once at the end. The gaps (64 px)
   exceed the network's receptive field (23 px), so no held-out pixel reaches a training window.
   OSM ``fclass`` -> class: :data:`OSM_TO_DW` (wetland and scrub are not used).
2. **Dynamic World as a teacher everywhere.** The student matches the original network's
   probabilities (KL divergence) on every pixel of each window, labelled or not, with a smaller
   weight than the labels; the teacher sees the unaugmented input. This keeps what the global
   model knows (classes and places the OSM labels lack) while the labels teach the local scene.
   With ``--chip-kd-weight`` the teacher also covers every pixel of the EuroSAT train chips of
   all ten classes (Europe, all seasons), so the network stays near the global model off
   T33UUU; ``--bigearthnet-kd-weight`` does the same on the BigEarthNet example patches (tried,
   not used for 1.2.0: validation fell).
3. **EuroSAT chips** (train split; 6 of 10 classes whose meaning maps onto one Dynamic World class,
   :data:`EUROSAT_TO_DW`): chip-level cross-entropy on the chip's mean logits. They come from
   all over Europe and every season, against over-fitting to one February scene.
4. **Augmentation**: dihedral flips/rotations; per-band gain (x0.9-1.1); with probability 0.5 an
   atmospheric-correction-like offset (subtracting up to 700 DN in B02, less at longer
   wavelengths) so the model also reads L2A surface reflectance like L1C top of atmosphere.
5. **Batch norm**: ``--bn frozen`` keeps Dynamic World's running statistics (batches of four
   windows move them, and validation with them, from step to step); ``--ema`` validates an
   average of the weights instead (tried, not better).

The command that made the shipped 1.2.0 is in docs/models.md ("landcover-s2").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.landcover_elsewhere import LPIS_TRAIN_TILES, load_lpis, uniform_patches  # noqa: E402
from benchmarks.landcover_scores import (  # noqa: E402
    OSM, REF, REF_MAP, SCENE, map_to_legend, rasterise, scores,
)
from geofg.batch import normalise  # noqa: E402
from geofg.models.inference.bundle import load_tensors, read_card  # noqa: E402
from geofg.models.inference.dynamicworld import DynamicWorldNet  # noqa: E402
from geofg.models.inference.predictor import SELFCHECK_KEYS  # noqa: E402
from geofg.models.inference.registry import publish_bundle, resolve_model  # noqa: E402
from geofg.models.training.train import EUROSAT_BANDS, EUROSAT_CLASSES, load_chips  # noqa: E402

DW_CLASSES = ["water", "trees", "grass", "flooded_vegetation", "crops", "shrub_and_scrub",
              "built", "bare", "snow_and_ice"]
OSM_TO_DW = {"water": 0, "forest": 1, "meadow": 2, "grass": 2, "farm": 4, "residential": 6}
"""OSM ``fclass`` -> Dynamic World class. ``wetland`` and ``scrub`` are not used as labels: in this
scene OSM draws reed beds, wet meadows, young forest and bushland under them, which fall into
several Dynamic World classes; the teacher supplies flooded vegetation and shrub instead (a run
with wetland -> flooded_vegetation and scrub -> shrub_and_scrub lost lake pixels to them)."""
EUROSAT_TO_DW = {"SeaLake": 0, "Forest": 1, "Pasture": 2, "AnnualCrop": 4, "Residential": 6,
                 "Industrial": 6}
FINE_TUNED_ATTRIBUTION = (
    "Derived from the Dynamic World model (google/dynamicworld@0dd288f), Copyright 2021 Google LLC,"
    " Apache-2.0. This code is produced for the Dynamic World Project by Google in partnership with"
    " National Geographic and the World Resources Institute. Brown et al. 2022, Scientific Data, doi"
    " 10.1038/s41597-022-01307-4. Ported to torch and fine-tuned by geofg (all layers; the weights"
    " differ from Google's)."
)
TRAIN_COLS, VAL_COLS, EAST_COLS = (0, 704), (768, 960), (1024, 1536)
# offsets (DN) an atmospheric correction removes at most, per Dynamic World band
L2A_OFFSET = np.array([700, 500, 400, 300, 200, 200, 200, 100, 80], np.float32)


def data_dir() -> Path:
    return Path(os.environ.get("GEOFG_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


def load_scene(root: Path, bands: list[str]):
    import rasterio

    with rasterio.open(root / SCENE) as ds:
        stack, transform = ds.read(), ds.transform
    raw = stack[[EUROSAT_BANDS.index(b) for b in bands]].astype(np.float32)
    shape = raw.shape[1:]
    osm = rasterise(root / OSM, "fclass", OSM_TO_DW, shape, transform)
    legend_osm = rasterise(root / OSM, "fclass", {"farm": 2, "meadow": 3, "grass": 3, "forest": 1,
                                                    "residential": 4, "water": 0}, shape, transform)
    ref = rasterise(root / REF, "cid", REF_MAP, shape, transform)
    return raw, osm, legend_osm, ref


def load_eurosat(root: Path, bands: list[str], split: str) -> tuple[np.ndarray, list[str]]:
    """EuroSAT chips of ``split``, every class, in ``bands`` order (float32), and their labels."""
    names = list(EUROSAT_CLASSES)
    chips = load_chips(root / "eurosat_ms", bands=EUROSAT_BANDS, class_names=names, splits=[split]).splits[split]
    x = chips.x[:, [EUROSAT_BANDS.index(b) for b in bands]].astype(np.float32)
    return x, [names[i] for i in chips.y]


def mapped_chips(xs: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The chips whose EuroSAT class means one Dynamic World class (:data:`EUROSAT_TO_DW`), in
    their order, with that class."""
    keep = [i for i, n in enumerate(names) if n in EUROSAT_TO_DW]
    return xs[keep], np.array([EUROSAT_TO_DW[names[i]] for i in keep])


def norm(raw: np.ndarray, card) -> np.ndarray:
    return normalise(raw, np.ones(raw.shape[-2:], bool), card.scale, card.mean, card.std,
                     card.normalisation)


def augment_raw(raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-band gain and, half the time, an atmospheric-correction-like offset (raw DN)."""
    c = raw.shape[-3]
    gain = rng.uniform(0.9, 1.1, size=(c, 1, 1)).astype(np.float32)
    out = raw * gain
    if rng.random() < 0.5:
        out = out - (rng.uniform(0, 1) * L2A_OFFSET).reshape(c, 1, 1)
    return np.maximum(out, 0)


def dihedral(t: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    t = torch.rot90(t, k, dims=(-2, -1))
    return torch.flip(t, dims=(-1,)) if flip else t


def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * net``, parameters and batch-norm statistics alike."""
    with torch.no_grad():
        for e, v in zip(ema.state_dict().values(), net.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                e.copy_(v)


def kl_to_teacher(probs: torch.Tensor, logits: torch.Tensor,
                  where: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) per pixel, averaged (over the pixels ``where`` is True, if given):
    ``probs`` the teacher's, ``logits`` the student's."""
    logp = F.log_softmax(logits, 1)
    kl = (probs * (torch.log(probs.clamp_min(1e-8)) - logp)).sum(1)
    if where is None:
        return kl.mean()
    return kl[where].mean() if bool(where.any()) else kl.sum() * 0


def teacher_loss(student, xs_raw: np.ndarray, probs: torch.Tensor, size: int,
                 rng: np.random.Generator, card) -> torch.Tensor:
    """:func:`kl_to_teacher` on ``size`` of ``xs_raw`` (raw DN, augmented for the student; the
    teacher's ``probs`` of the unaugmented samples), one dihedral transform for the batch."""
    idx = rng.choice(len(xs_raw), size=size, replace=False)
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    x = torch.from_numpy(np.stack([norm(augment_raw(xs_raw[i], rng), card) for i in idx]))
    return kl_to_teacher(dihedral(probs[idx], k, flip), student(dihedral(x, k, flip)))


def lpis_loss(student, xs: np.ndarray, ys: np.ndarray, size: int, rng: np.random.Generator,
              card) -> torch.Tensor:
    """Cross-entropy on ``size`` LPIS composites, each a uniform 24 px patch (a field's interior:
    points carry one spectrum, no neighbourhood), scored on the central 8 x 8 pixels, away from
    the padding. Augmented: per-band gain, and half the time an offset added (L2A read as L1C)."""
    idx = rng.choice(len(xs), size=size, replace=False)
    raw = xs[idx] * rng.uniform(0.9, 1.1, size=(size, xs.shape[1])).astype(np.float32)
    if rng.random() < 0.5:
        raw = raw + rng.uniform(0, 1) * L2A_OFFSET
    logits = student(torch.from_numpy(norm(uniform_patches(raw), card)))[:, :, 8:16, 8:16]
    target = torch.from_numpy(ys[idx]).view(-1, 1, 1).expand(-1, 8, 8)
    return F.cross_entropy(logits, target)


def predict_scene(net, x: np.ndarray) -> np.ndarray:
    net.eval()
    with torch.inference_mode():
        return net(torch.from_numpy(x[None])).numpy()[0]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--kd-weight", type=float, default=0.5)
    ap.add_argument("--chip-weight", type=float, default=0.5)
    ap.add_argument("--kd-where", choices=("all", "unlabelled"), default="all",
                    help="the scene's pixels the teacher covers: all (1.2.0), or only those without"
                    " an OSM label, so labels alone teach where they exist")
    ap.add_argument("--chip-kd-weight", type=float, default=0.0,
                    help="weight of Dynamic World as a teacher on every pixel of EuroSAT train chips"
                         " of all ten classes (Europe, all seasons); 0: not used")
    ap.add_argument("--lpis-weight", type=float, default=0.0,
                    help="weight of the French LPIS points (WorldCereal, 2023, tile 30UYU: crops and"
                         " grassland through the seasons) as uniform 24 px patches; 0: not used")
    ap.add_argument("--bigearthnet-kd-weight", type=float, default=0.0,
                    help="weight of Dynamic World as a teacher on every pixel of the BigEarthNet"
                         " example patches (L2A; their labels are not used); 0: not used")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ema", type=float, default=0.0,
                    help="validate and keep an exponential moving average of the weights with this"
                         " decay (e.g. 0.98); 0: the weights as trained")
    ap.add_argument("--bn", choices=("train", "frozen"), default="train",
                    help="batch-norm statistics: updated from each batch (train) or kept as Dynamic"
                         " World's (frozen; its scale and shift are still learnt)")
    ap.add_argument("--version", required=True, help="the bundle's card version, e.g. 1.2.0")
    return ap


def main() -> int:
    args = parser().parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = data_dir()
    t0 = time.time()

    dw_path = resolve_model("dynamic-world")
    card = read_card(dw_path)
    tensors = load_tensors(dw_path)
    init = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k not in SELFCHECK_KEYS}
    teacher = DynamicWorldNet()
    teacher.load_state_dict(init)
    teacher.eval()
    student = DynamicWorldNet()
    student.load_state_dict(init)

    raw, osm, legend_osm, ref = load_scene(root, card.bands)
    x_scene = norm(raw, card)
    t_probs = torch.softmax(torch.from_numpy(predict_scene(teacher, x_scene)), 0)
    all_chips_x, names = load_eurosat(root, card.bands, "train")
    chips_x, chips_y = mapped_chips(all_chips_x, names)
    val_chips_x, val_chips_y = mapped_chips(*load_eurosat(root, card.bands, "val"))
    print(f"scene {raw.shape}, EuroSAT chips train {len(chips_y)} val {len(val_chips_y)}")
    lpis_x = lpis_y = None
    if args.lpis_weight > 0:
        lpis_x, lpis_y, _ = load_lpis(root, card.bands, held_out=False)
        print(f"LPIS composites {len(lpis_y)} (tiles {', '.join(LPIS_TRAIN_TILES)}): "
              f"crops {int((lpis_y == 4).sum())}, grass {int((lpis_y == 2).sum())}")
    kd_chips_x = kd_chips_p = None
    if args.chip_kd_weight > 0:
        kd_chips_x = all_chips_x
        with torch.inference_mode():
            kd_chips_p = torch.softmax(teacher(torch.from_numpy(norm(kd_chips_x, card))), 1)
        print(f"teacher on {len(kd_chips_x)} EuroSAT train chips (all classes)")
    ben_x = ben_p = None
    if args.bigearthnet_kd_weight > 0:
        from benchmarks.landcover_elsewhere import read_band_folder

        folders = sorted((root / "bigearthnet_examples" / "BigEarthNet-S2-Example").iterdir())
        ben_x = np.stack([read_band_folder(f, card.bands) for f in folders])
        with torch.inference_mode():
            ben_p = torch.softmax(teacher(torch.from_numpy(norm(ben_x, card))), 1)
        print(f"teacher on {len(ben_x)} BigEarthNet patches")

    labels = torch.from_numpy(osm.astype(np.int64))
    labels[labels == 255] = -1
    sub = osm[:, TRAIN_COLS[0]:TRAIN_COLS[1]]
    counts = np.bincount(sub[sub < 9].ravel(), minlength=9)
    weights = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** 0.5, 0.0)
    weights = torch.tensor(weights / weights[counts > 0].mean(), dtype=torch.float32)
    print("train labelled pixels per class", dict(zip(DW_CLASSES, counts.tolist(), strict=True)))

    def val_score(net) -> dict:
        pred = map_to_legend(predict_scene(net, x_scene).argmax(0).astype(np.uint8), DW_CLASSES)
        s = scores(legend_osm[:, VAL_COLS[0]:VAL_COLS[1]], pred[:, VAL_COLS[0]:VAL_COLS[1]])
        with torch.inference_mode():
            cl = net(torch.from_numpy(norm(val_chips_x, card))).mean((-2, -1)).argmax(1).numpy()
        s["eurosat_val_chip_acc"] = float((cl == val_chips_y).mean())
        return s

    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=1e-4)
    ema = None
    if args.ema > 0:
        ema = DynamicWorldNet()
        ema.load_state_dict(student.state_dict())
    w = args.window
    h, _ = raw.shape[1:]
    history, best, best_state = [], None, None
    base = val_score(student)
    print(f"step 0 (Dynamic World): val agreement {base['agreement']:.4f} kappa {base['kappa']:.4f}"
          f" chips {base['eurosat_val_chip_acc']:.3f}")
    history.append({"step": 0, **{k: base[k] for k in ("agreement", "kappa", "eurosat_val_chip_acc")}})
    for step in range(1, args.steps + 1):
        student.train()
        if args.bn == "frozen":
            for m in student.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        lr = args.lr * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        xs, ys, ts = [], [], []
        for _ in range(args.batch):
            r0 = int(rng.integers(0, h - w + 1))
            c0 = int(rng.integers(TRAIN_COLS[0], TRAIN_COLS[1] - w + 1))
            win = np.s_[:, r0:r0 + w, c0:c0 + w]
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            xs.append(dihedral(torch.from_numpy(norm(augment_raw(raw[win], rng), card)), k, flip))
            ys.append(dihedral(labels[r0:r0 + w, c0:c0 + w], k, flip))
            ts.append(dihedral(t_probs[win], k, flip))
        x, y, tp = torch.stack(xs), torch.stack(ys), torch.stack(ts)
        logits = student(x)
        loss_lab = F.cross_entropy(logits, y, weight=weights, ignore_index=-1)
        loss_kd = kl_to_teacher(tp, logits, (y < 0) if args.kd_where == "unlabelled" else None)
        idx = rng.choice(len(chips_y), size=16, replace=False)
        cx = torch.from_numpy(np.stack([norm(augment_raw(chips_x[i], rng), card) for i in idx]))
        cx = dihedral(cx, int(rng.integers(4)), bool(rng.integers(2)))
        loss_chip = F.cross_entropy(student(cx).mean((-2, -1)), torch.from_numpy(chips_y[idx]))
        loss = loss_lab + args.kd_weight * loss_kd + args.chip_weight * loss_chip
        if kd_chips_x is not None:
            loss = loss + args.chip_kd_weight * teacher_loss(student, kd_chips_x, kd_chips_p, 16, rng, card)
        if lpis_x is not None:
            loss = loss + args.lpis_weight * lpis_loss(student, lpis_x, lpis_y, 32, rng, card)
        if ben_x is not None:
            loss = loss + args.bigearthnet_kd_weight * teacher_loss(student, ben_x, ben_p, 2, rng, card)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if ema is not None:
            update_ema(ema, student, args.ema)
        judged = student if ema is None else ema
        if step % args.eval_every == 0 or step == args.steps:
            s = val_score(judged)
            rec = {"step": step, "loss": round(loss.item(), 4), "lab": round(loss_lab.item(), 4),
                   "kd": round(loss_kd.item(), 4), "chip": round(loss_chip.item(), 4),
                   **{k: s[k] for k in ("agreement", "kappa", "eurosat_val_chip_acc")}}
            history.append(rec)
            print(json.dumps(rec), f"{time.time() - t0:.0f}s", flush=True)
            if best is None or s["agreement"] > best["agreement"]:
                best = {**rec}
                best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
    return finish(args, student, teacher, best, best_state, history, out, t0, legend_osm, ref,
                  x_scene, "all layers fine-tuned")


def training_record(args, how: str, best_step: int, wall_s: int, machine: str, command: str) -> dict:
    """The card's ``training`` entry: what the network learned from, as the arguments say."""
    teacher = ("every pixel" if args.kd_where == "all" else "the unlabelled pixels") + " of the scene"
    if args.chip_kd_weight > 0:
        teacher += " and every pixel of the EuroSAT train chips (all ten classes)"
    if args.bigearthnet_kd_weight > 0:
        teacher += " and the BigEarthNet example patches"
    labels = ("OSM land use of T33UUU (2017-02-16), columns 0-703 (OSM_TO_DW); Dynamic World's own"
              f" probabilities as a teacher on {teacher} (KL); EuroSAT train chips of SeaLake, Forest,"
              " Pasture, AnnualCrop, Residential, Industrial (chip-level cross-entropy)")
    held_out = "columns 1024-1535 (east), EuroSAT test split"
    if args.lpis_weight > 0:
        labels += ("; WorldCereal's French LPIS points (2023) of tile " + ", ".join(LPIS_TRAIN_TILES)
                   + ": temporary crops -> crops, grassland and temporary grass -> grass, every 10-day"
                   " L2A composite (September 2022 - January 2024) as a uniform 24 px patch"
                   " (cross-entropy on the centre)")
        held_out += ", the LPIS points of the other tiles"
    return {
        "start": f"dynamic-world (google/dynamicworld@0dd288f), {how}",
        "labels": labels,
        "selection": "step with the best 5-class OSM agreement on columns 768-959",
        "held_out": held_out,
        "augmentation": "dihedral; per-band gain 0.9-1.1; L2A-like offsets (p=0.5)",
        "steps": args.steps, "best_step": best_step, "batch": args.batch,
        "window": args.window, "lr": args.lr, "kd_weight": args.kd_weight, "kd_where": args.kd_where,
        "chip_weight": args.chip_weight, "seed": args.seed, "ema": args.ema,
        "chip_kd_weight": args.chip_kd_weight,
        "bigearthnet_kd_weight": args.bigearthnet_kd_weight,
        "lpis_weight": args.lpis_weight,
        "batch_norm_statistics": args.bn,
        "wall_time_s": wall_s, "machine": machine,
        "receptive_margin_px": 23,
        "command": command,
    }


def finish(args, student, teacher, best, best_state, history, out, t0, legend_osm, ref, x_scene,
           how: str) -> int:
    """Score once on the held-out part, write the bundle and results.json."""
    train_s = time.time() - t0
    student.load_state_dict(best_state)
    print(f"best step {best['step']} val agreement {best['agreement']:.4f}; {train_s:.0f} s")

    # scored once, at the end: the held-out east part and the hand-drawn polygons
    results = {}
    for name, net in (("dynamic-world", teacher), ("landcover-s2", student)):
        pred = map_to_legend(predict_scene(net, x_scene).argmax(0).astype(np.uint8), DW_CLASSES)
        e = np.s_[:, EAST_COLS[0]:EAST_COLS[1]]
        results[name] = {"east_osm": scores(legend_osm[e], pred[e]),
                         "east_hand_drawn": scores(ref[e], pred[e]),
                         "hand_drawn_whole_scene": scores(ref, pred)}
        r = results[name]
        print(f"{name}: east OSM agreement {r['east_osm']['agreement']:.4f} kappa"
              f" {r['east_osm']['kappa']:.4f}; hand-drawn east {r['east_hand_drawn']['agreement']:.4f}"
              f" whole {r['hand_drawn_whole_scene']['agreement']:.4f}")

    metrics = {
        "T33UUU_east_osm_agreement": results["landcover-s2"]["east_osm"]["agreement"],
        "T33UUU_east_osm_kappa": results["landcover-s2"]["east_osm"]["kappa"],
        "T33UUU_east_hand_drawn_agreement": results["landcover-s2"]["east_hand_drawn"]["agreement"],
        "T33UUU_val_osm_agreement": best["agreement"],
        "eurosat_val_chip_accuracy_6_classes": best["eurosat_val_chip_acc"],
        "dynamic_world_zero_shot": {
            "T33UUU_east_osm_agreement": results["dynamic-world"]["east_osm"]["agreement"],
            "T33UUU_east_osm_kappa": results["dynamic-world"]["east_osm"]["kappa"],
            "T33UUU_east_hand_drawn_agreement":
                results["dynamic-world"]["east_hand_drawn"]["agreement"],
        },
    }
    from scripts.dynamicworld.make_bundle import dw_card, selfcheck_pair

    new = dw_card(
        name="landcover-s2",
        version=args.version,
        processing_levels=["L1C", "L2A"],
        training=training_record(args, how, best["step"], round(train_s),
                                 f"{platform.machine()} {os.cpu_count()} CPUs", shlex.join(sys.argv)),
        metrics=metrics,
        attribution=FINE_TUNED_ATTRIBUTION,
        made_by="scripts/train_landcover_s2.py",
    )
    student.eval()
    tensors = {k: v.numpy() for k, v in student.state_dict().items()} | selfcheck_pair(student, new)
    sha, pinned = publish_bundle(Path(args.bundle), tensors, new)
    (out / "results.json").write_text(json.dumps(
        {"history": history, "best": best, "results": results, "metrics": metrics}, indent=1))
    print(f"wrote {args.bundle} sha256 {sha}{' (pinned)' if pinned else ''}")
    return 0




if __name__ == "__main__":
    raise SystemExit(main())
