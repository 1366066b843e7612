"""``geofg models``, ``train``, ``evaluate``, ``export`` and ``explain``: commands about model bundles."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from geofg.cli.common import (
    Bands,
    Chunk,
    Device,
    Inputs,
    Quiet,
    Verbose,
    _configure,
    _fail,
    _mosaic,
    app,
    err,
    models_app,
    out,
    train_app,
)
from geofg.errors import ConfigError, GeofgError


@models_app.command("list")
def models_list() -> None:
    """List installed bundles with their bands, classes and held-out metrics."""
    from geofg.models.inference.registry import list_models

    models = list_models()
    if not models:
        out.print("no bundles found; pass --model PATH to a .safetensors bundle")
    for path, card in models:
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in card.metrics.items() if isinstance(v, float))
        out.print(f"[bold]{card.name}[/bold]  {card.task}, {len(card.bands)} bands, {len(card.classes)} classes")
        out.print(f"  bands:   {','.join(card.bands)}", soft_wrap=True)
        out.print(f"  classes: {', '.join(c.name for c in card.classes)}", soft_wrap=True)
        out.print(f"  held-out metrics: {metrics or '-'}", soft_wrap=True)
        out.print(f"  path:    {path}", soft_wrap=True, highlight=False)




@train_app.command("classifier")
def train_classifier_cmd(
    data: Annotated[Path, typer.Option("--data", help="Chips: a folder with labels.csv (file,label,split), a labels .csv, or one sub-folder per class.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The bundle to write (.safetensors).")],
    name: Annotated[Optional[str], typer.Option(help="Bundle name (default: the output's stem).")] = None,
    bands: Bands = None,
    scale: Annotated[Optional[float], typer.Option(help="Input scale: model input = DN * scale (default: 1e-4 for uint16, 1/255 for uint8).")] = None,
    encoder: Annotated[str, typer.Option(help="smp encoder without squeeze-excitation.")] = "tu-mobilenetv4_conv_small",
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 150,
    patience: Annotated[int, typer.Option(help="Early stopping: evaluations without val improvement (0 = off).")] = 5,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Epochs between val evaluations (and checkpoints).")] = 5,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine).")] = 2e-3,
    crop_px: Annotated[int, typer.Option("--crop-px", help="Random crops: shift chips by up to this many px.")] = 4,
    class_weighting: Annotated[bool, typer.Option("--class-weighting/--no-class-weighting", help="Weight the loss by inverse class frequency.")] = True,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Val share drawn per class when the data has no split.")] = 0.15,
    crop_classes: Annotated[Optional[str], typer.Option("--crop-classes", help="Classes where crop health applies, comma-separated.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 13,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 2,
    device: Device = "auto",
    checkpoint_dir: Annotated[Optional[Path], typer.Option("--checkpoint-dir", help="Save resumable state here; a re-run with the same arguments resumes from it.")] = None,
    init: Annotated[Optional[str], typer.Option("--init", help="Start from this bundle (same bands and encoder): transfer learning.")] = None,
    freeze_encoder: Annotated[bool, typer.Option("--freeze-encoder", help="With --init: train only the head and spectral branch.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output bundle.")] = False,
    search: Annotated[Optional[Path], typer.Option("--search", help="Hyper-parameter search (Ray Tune) over the space in this YAML (examples/search.yaml); the best trial on val is written to -o, a report to OUT.search.json/.md.")] = None,
    trials: Annotated[Optional[int], typer.Option("--trials", help="With --search (random): number of trials.")] = None,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Train a patch classifier (dense over scenes) on labelled chips and write a bundle."""
    _configure(verbose, quiet)
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from geofg.models.training.train import TrainConfig, train_bundle

    cfg = TrainConfig(encoder=encoder, epochs=epochs, patience=patience, eval_every=eval_every,
                      lr=lr, crop_px=crop_px, class_weighting=class_weighting, seed=seed,
                      threads=threads, device=device)
    if freeze_encoder and not init:
        err.print("[red]geofg: error:[/] --freeze-encoder needs --init BUNDLE; add --init")
        raise typer.Exit(2)
    crops = [c.strip() for c in crop_classes.split(",")] if crop_classes else []
    if search is not None or trials is not None:
        _search_cmd(search, trials, data, output, cfg, name=name, crop_classes=crops, scale=scale,
                    bands=[b.strip() for b in bands.split(",")] if bands else None,
                    val_fraction=val_fraction, init=init, freeze_encoder=freeze_encoder,
                    overwrite=overwrite, checkpoint_dir=checkpoint_dir, quiet=quiet)
        return
    bar = Progress(TextColumn("[bold]epochs"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                   TimeRemainingColumn(), console=out, disable=quiet)
    task = bar.add_task("train", total=epochs, info="")
    state = {"val": "", "started": False}

    def on_epoch(rec: dict) -> None:  # the bar starts with training, after every input check
        if not state["started"]:
            bar.start()
            state["started"] = True
        if "resumed_from" in rec:
            bar.update(task, completed=rec["resumed_from"])
            bar.console.print(f"resumed from the checkpoint after epoch {rec['resumed_from']}")
            return
        if "val_accuracy" in rec:
            state["val"] = f"val acc {rec['val_accuracy']:.3f} nll {rec['val_nll']:.3f}"
        bar.update(task, completed=rec["epoch"], info=f"loss {rec['loss']:.3f}  {state['val']}")

    try:
        res = train_bundle(data, output, cfg, name=name,
                           bands=[b.strip() for b in bands.split(",")] if bands else None,
                           scale=scale, crop_classes=crops, val_fraction=val_fraction,
                           checkpoint_dir=checkpoint_dir, init=init,
                           freeze_encoder=freeze_encoder, overwrite=overwrite, on_epoch=on_epoch)
    except GeofgError as e:
        raise _fail(e) from None
    finally:
        if state["started"]:
            bar.stop()
    rec, card = res["record"], res["card"]
    for note in res["notes"]:
        out.print(f"note: {note}", highlight=False)
    val = card.metrics.get("val_accuracy")
    out.print(f"wrote {res['bundle']} (sha256 {res['sha256'][:12]}): {len(card.bands)} bands, "
              f"{len(card.classes)} classes, best epoch {rec['best_epoch']} of {rec['epochs_run']}"
              f"{' (stopped early)' if rec['stopped_early'] else ''}, "
              f"val accuracy {'-' if val is None else f'{val:.3f}'}, {rec['train_seconds']:.0f} s on {rec['device']}",
              highlight=False, soft_wrap=True)


def _search_cmd(search: Optional[Path], trials: Optional[int], data: Path, output: Path, cfg,  # noqa: ANN001
                checkpoint_dir: Optional[Path], quiet: bool, **kw) -> None:  # noqa: ANN003
    """``geofg train classifier --search``: geofg.models.training.search, a table of the trials."""
    from rich.table import Table

    from geofg.models.training.search import (
        format_params,
        load_space,
        search_bundle,
        trial_table,
    )

    def on_trial(t: dict) -> None:
        if not quiet:
            acc = t.get("val_accuracy")
            out.print(f"trial {t['trial']} {t['status']}: {format_params(t['config'])}"
                      f"{'' if acc is None else f', val accuracy {acc:.3f}'}", highlight=False)

    try:
        if search is None:
            raise ConfigError("--trials needs --search SPACE.yaml; add --search")
        if checkpoint_dir is not None:
            raise ConfigError("--checkpoint-dir does not apply to --search (each trial is a fresh"
                              " run); drop it")
        space = load_space(search, trials=trials, epochs=cfg.epochs,
                           freeze_encoder=kw["freeze_encoder"])
        report = search_bundle(data, output, cfg, space, space_path=search, on_trial=on_trial, **kw)
    except GeofgError as e:
        report = getattr(e, "report", None)
        if report is None:
            raise _fail(e) from None
        failed = e
    else:
        failed = None
    if not quiet:
        headers, rows = trial_table(report)
        table = Table(*headers, title=f"search: {len(rows)} trials, best on val")
        for row in rows:
            table.add_row(*row)
        out.print(table)
    best = report["best"]
    out.print(f"wrote {report['bundle']} (sha256 {report['sha256'][:12]}): trial {best['index']},"
              f" val accuracy {best['val_accuracy']:.3f}; report {report['report_md']}",
              highlight=False, soft_wrap=True)
    if failed is not None:
        raise _fail(failed)


@train_app.command("segmenter")
def train_segmenter_cmd(
    image: Annotated[Path, typer.Option("--image", help="The scene to train on (GeoTIFF/COG or Sentinel-2 band files).")],
    labels: Annotated[Path, typer.Option("--labels", help="Dense labels: polygons (.gpkg/.geojson/.shp/.fgb, class in --class-field) or a class mask (.tif on the image's grid).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The bundle to write (.safetensors).")],
    init: Annotated[Optional[str], typer.Option("--init", help="Start the U-Net's encoder from this bundle (e.g. eurosat-13): transfer learning; the bundle's bands, scale and mean/std are used.")] = None,
    class_field: Annotated[Optional[str], typer.Option("--class-field", help="Polygons: the attribute holding each polygon's class.")] = None,
    class_map: Annotated[Optional[str], typer.Option("--class-map", help="SOURCE=CLASS,... (SOURCE=- leaves it unlabelled); several sources may share a class. Default: each value is a class.")] = None,
    region: Annotated[Optional[str], typer.Option("--region", help="Train only inside minx,miny,maxx,maxy (image CRS); hold the rest out.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Bundle name (default: the output's stem).")] = None,
    bands: Bands = None,
    crop_classes: Annotated[Optional[str], typer.Option("--crop-classes", help="Classes where crop health applies, comma-separated.")] = None,
    encoder: Annotated[str, typer.Option(help="smp encoder without --init (no squeeze-excitation).")] = "tu-mobilenetv4_conv_small",
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 300,
    window: Annotated[int, typer.Option(help="Training window edge (px, multiple of 32).")] = 128,
    decoder_channels: Annotated[str, typer.Option("--decoder-channels", help="U-Net decoder widths, deepest first, comma-separated.")] = "128,64,32,16,8",
    batch: Annotated[int, typer.Option(help="Windows per step.")] = 8,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine).")] = 1e-3,
    min_labelled: Annotated[float, typer.Option("--min-labelled", help="Sample windows with at least this share of labelled pixels.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed (same seed: same windows).")] = 13,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 1,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output bundle.")] = False,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Fine-tune a U-Net segmenter on one labelled scene (random windows from the labelled area) and write a bundle."""
    _configure(verbose, quiet)
    from geofg.models.training.seg_labels import parse_class_map
    from geofg.models.training.segment import SegTrainConfig, train_segmenter_bundle

    try:
        widths = tuple(int(c) for c in decoder_channels.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 5 or min(widths) < 1:
        raise _fail(ConfigError(f"--decoder-channels: expected 5 positive integers, found "
                                f"{decoder_channels!r}; pass e.g. 128,64,32,16,8"))
    cfg = SegTrainConfig(window=window, batch=batch, steps=steps, lr=lr, min_labelled=min_labelled,
                         seed=seed, threads=threads, device=device, decoder_channels=widths)

    def on_step(rec: dict) -> None:
        if not quiet:
            out.print(f"step {rec['step']}/{steps}: loss {rec['loss']:.4f} ({rec['seconds']:.0f} s)",
                      highlight=False)

    try:
        res = train_segmenter_bundle(
            image, labels, output, cfg, init=init, name=name,
            bands=[b.strip() for b in bands.split(",")] if bands else None, region=region,
            class_field=class_field, class_map=parse_class_map(class_map),
            crop_classes=[c.strip() for c in crop_classes.split(",")] if crop_classes else (),
            encoder=encoder, overwrite=overwrite, on_step=on_step)
    except GeofgError as e:
        raise _fail(e) from None
    card, rec = res["card"], res["record"]
    for note in res["notes"]:
        out.print(f"note: {note}", highlight=False)
    t = rec.get("transfer")
    init_txt = (f", encoder from {init} ({t['copied_encoder']}/{t['encoder_tensors']} tensors)"
                if t else ", from scratch")
    out.print(f"wrote {res['bundle']} (sha256 {res['sha256'][:12]}): unet/{card.encoder}, "
              f"{len(card.bands)} bands, classes {', '.join(card.class_names)}{init_txt}; "
              f"{rec['config']['steps']} steps in {rec['train_seconds']:.0f} s on {rec['device']}",
              highlight=False, soft_wrap=True)


@app.command()
def evaluate(
    bundle: Annotated[str, typer.Argument(help="Bundle name or .safetensors path.")],
    report: Annotated[Path, typer.Option("--report", help="Folder for report.json, confusion_matrix.png, report.md.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Labelled chips (as for geofg train classifier).")] = None,
    split: Annotated[str, typer.Option(help="Split to score: test, val or train.")] = "test",
    bands: Bands = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average the 8 flips/90-degree rotations of each chip.")] = False,
    image: Annotated[Optional[Path], typer.Option("--image", help="Segmentation: the scene to predict (with --labels instead of --data).")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Segmentation: polygons or a class mask to score against (IoU per class, mIoU).")] = None,
    region: Annotated[Optional[str], typer.Option("--region", help="Segmentation: score only inside minx,miny,maxx,maxy (image CRS), e.g. a held-out part.")] = None,
    class_field: Annotated[Optional[str], typer.Option("--class-field", help="Segmentation, polygons: the class attribute (default: the bundle's training one).")] = None,
    class_map: Annotated[Optional[str], typer.Option("--class-map", help="Segmentation: SOURCE=CLASS,... onto the bundle's classes (default: the bundle's training map).")] = None,
    chunk: Annotated[int, typer.Option(help="Segmentation: unit size (px), as geofg classify.")] = 1024,
    device: Device = "auto", verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Score a bundle: on labelled chips (--data; accuracy, F1) or on a scene against dense labels (--image --labels; IoU per class, mIoU, optionally within --region). Writes a report."""
    _configure(verbose, quiet)
    if (data is None) == (image is None or labels is None):
        err.print("[red]geofg: error:[/] give either --data CHIPS, or --image SCENE with --labels"
                  " POLYGONS|MASK", highlight=False)
        raise typer.Exit(2)
    if image is not None:
        _evaluate_segmentation(bundle, report, image, labels, region, class_field, class_map,
                               bands, chunk, device, quiet)
        return
    from geofg.models.training.evaluate import evaluate_bundle, write_report

    try:
        rep = evaluate_bundle(bundle, data, split=split,
                              bands=[b.strip() for b in bands.split(",")] if bands else None,
                              device=device, tta=tta)
        written = write_report(rep, report)
    except GeofgError as e:
        raise _fail(e) from None
    if not quiet:
        out.print(f"{rep['bundle_name']} on {rep['split']} ({rep['n']} chips): accuracy "
                  f"{rep['accuracy']:.4f}, macro F1 {rep['macro_f1']:.4f}", highlight=False)
        out.print(f"report: {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)


def _evaluate_segmentation(bundle: str, report: Path, image: Path, labels: Path,
                           region: str | None, class_field: str | None, class_map: str | None,
                           bands: str | None, chunk: int, device: str, quiet: bool) -> None:
    from geofg.models.training.seg_eval import evaluate_segmentation, write_seg_report
    from geofg.models.training.seg_labels import parse_class_map

    try:
        rep = evaluate_segmentation(
            bundle, image, labels, region=region, class_field=class_field,
            class_map=parse_class_map(class_map),
            bands=[b.strip() for b in bands.split(",")] if bands else None, device=device,
            chunk=chunk)
        written = write_seg_report(rep, report)
    except GeofgError as e:
        raise _fail(e) from None
    if not quiet:
        ious = ", ".join(f"{n} {c['iou']:.3f}" for n, c in rep["per_class"].items()
                         if c["iou"] is not None)
        out.print(f"{rep['bundle_name']} on {rep['n']:,} labelled px"
                  f"{' in the region' if rep['region'] else ''}: mIoU {rep['miou']:.4f}, pixel "
                  f"accuracy {rep['pixel_accuracy']:.4f}, kappa {rep['kappa']:.4f}; IoU {ious}", highlight=False, soft_wrap=True)
        out.print(f"report: {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)


def _export_mosaic(mosaic: str, cog: Path | None, png: Path | None, time: str | None, layer: str,
                   overwrite: bool, quiet: bool, polygons: Path | None = None) -> None:
    from geofg.scan.cog import export_cog, export_png

    try:
        mosaic = _mosaic(mosaic)
        written = []
        if cog is not None:
            written.append(export_cog(mosaic, cog, when=time, layer=layer, overwrite=overwrite))
        if png is not None:
            written.append(export_png(mosaic, png, when=time, layer=layer, overwrite=overwrite))
        if polygons is not None:
            from geofg.products.polygons import export_polygons

            path, n = export_polygons(mosaic, polygons, when=time, layer=layer, overwrite=overwrite)
            written.append(f"{path} ({n} polygons)")
    except GeofgError as e:
        raise _fail(e) from None
    if not quiet:
        for w in written:
            out.print(f"wrote {w}", highlight=False, markup=False, soft_wrap=True)


def _is_model(source: str) -> bool:
    """True when `geofg export SOURCE` names a model (a bundle name, .safetensors, or weights file)."""
    from geofg.models.inference.bundle import PICKLED_SUFFIXES

    p = Path(source)
    if p.suffix.lower() in {".safetensors", *PICKLED_SUFFIXES}:
        return True
    return not p.exists() and "/" not in source  # a bundle name


@app.command()
def export(
    source: Annotated[str, typer.Argument(help="What to export: a model bundle (name or .safetensors path).")],
    onnx: Annotated[Optional[Path], typer.Option("--onnx", help="Write the bundle as an ONNX model (OUT.onnx) for `classify --model OUT.onnx`.")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="With --onnx: int8 quantisation (onnxruntime static, calibrated on the train split of --data).")] = False,
    data: Annotated[Optional[Path], typer.Option("--data", help="Labelled chips (labels.csv with train/test splits): calibrates --int8, measures test accuracy. Default: $GEOFG_DATA/eurosat_ms when present.")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for torch and onnxruntime in the speed measurement.")] = 2,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    cog: Annotated[Optional[Path], typer.Option("--cog", help="SOURCE a mosaic: write one layer as a Cloud-Optimized GeoTIFF (OUT.tif).")] = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="SOURCE a mosaic: write the quicklook with legend (OUT.png) of the latest view: --layer class, health or ndvi (five NDVI classes).")] = None,
    polygons: Annotated[Optional[Path], typer.Option("--polygons", help="SOURCE a mosaic: write the layer's patches as polygons (OUT.parquet, GeoParquet 1.1), streamed chunk row by chunk row.")] = None,
    time: Annotated[Optional[str], typer.Option("--time", help="SOURCE a scan mosaic: the date to export, e.g. 2020-08-31 (default: the latest view).")] = None,
    layer: Annotated[str, typer.Option("--layer", help="SOURCE a mosaic: class, health, confidence, ndvi or mask (with --cog: OUT.tif.aux.xml category names and OUT.qml QGIS style beside class, health and mask; ndvi keeps uint8 codes with scale 0.01, offset -1).")] = "class",
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Export SOURCE: a model bundle to ONNX (--onnx, optionally --int8), with measured accuracy and speed-up; or a mosaic layer as a COG (--cog), PNG (--png) or polygons (--polygons)."""
    _configure(verbose, quiet)
    if not _is_model(source) and (cog is not None or png is not None or polygons is not None):
        _export_mosaic(source, cog, png, time, layer, overwrite, quiet, polygons)
        return
    if not _is_model(source):
        err.print(f"[red]geofg: error:[/] {source}: expected a model bundle (.safetensors or a bundle"
                  " name); only model export is available; give a bundle", highlight=False)
        raise typer.Exit(2)
    if onnx is None:
        err.print("[red]geofg: error:[/] exporting a bundle needs --onnx OUT.onnx; add it", highlight=False)
        raise typer.Exit(2)
    from geofg.models.inference.registry import read_model_card, resolve_model
    from geofg.models.tools.export import export_onnx, load_split

    try:
        card = read_model_card(resolve_model(source))
        if data is None and os.environ.get("GEOFG_DATA"):
            guess = Path(os.environ["GEOFG_DATA"]) / "eurosat_ms"
            data = guess if (guess / "labels.csv").is_file() else None
        calib = load_split(data, "train", card)[0] if (int8 and data is not None) else None
        evaluation = load_split(data, "test", card) if data is not None else None
        if calib is not None:
            from geofg.models.tools.export import chip_canvases

            calib = chip_canvases(calib, 3)
        rep = export_onnx(source, onnx, int8=int8, calibration=calib, evaluation=evaluation,
                          threads=threads, overwrite=overwrite)
    except GeofgError as e:
        raise _fail(e) from None
    mb = 1024 * 1024
    out.print(f"wrote {rep.output} ({rep.precision}, {rep.size_bytes / mb:.2f} MiB; bundle "
              f"{rep.source_size_bytes / mb:.2f} MiB); max |p_onnx - p_bundle| on a check batch "
              f"{rep.max_abs_prob_diff:.2e}", highlight=False, soft_wrap=True)
    if rep.accuracy:
        a = rep.accuracy
        out.print(f"test accuracy ({a['n']} chips): fp32 bundle {a['fp32_bundle']:.3f}, {rep.precision} "
                  f"ONNX {a['onnx']:.3f} ({a['onnx'] - a['fp32_bundle']:+.3f}); same class on "
                  f"{a['agreement']:.1%} of chips", highlight=False, soft_wrap=True)
    else:
        out.print("test accuracy: not measured (no --data with a test split)", highlight=False)
    s = rep.speed
    if s:
        line = (f"speed, batch {'x'.join(map(str, s['batch']))}, {s['threads']} threads, median of "
                f"{s['runs']}: torch fp32 {s['torch_fp32_s']:.3f} s, ONNX {rep.precision} "
                f"{s['onnx_s']:.3f} s: {s['speedup_vs_torch']:.2f}x")
        if "onnx_fp32_s" in s:
            line += f" (vs ONNX fp32 {s['onnx_fp32_s']:.3f} s: {s['speedup_vs_onnx_fp32']:.2f}x)"
        out.print(line, highlight=False, soft_wrap=True)


@app.command()
def explain(
    bundle: Annotated[str, typer.Argument(help="Bundle name or .safetensors path.")],
    inputs: Inputs,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Chip: a .png; scene: a .tif (quicklook beside it). Default: INPUT.gradcam.png/.tif.")] = None,
    class_name: Annotated[Optional[str], typer.Option("--class", help="Class to explain (default: the predicted one).")] = None,
    stage: Annotated[Optional[int], typer.Option(help="Encoder stage (1..5; k = stride 2^k); default 3 (stride 8) for chips, 5 for scenes.")] = None,
    mode: Annotated[str, typer.Option(help="auto (chip when both sides <= 2x the patch size), chip or scene.")] = "auto",
    bands: Bands = None, chunk: Chunk = 512, device: Device = "cpu",
    halo: Annotated[Optional[int], typer.Option(help="Scene: context pixels around each unit (default 3x the card's halo).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Grad-CAM maps: a PNG overlay for a chip, a georeferenced GeoTIFF (tiled like prediction) for a scene."""
    _configure(verbose, quiet)
    from geofg.models.tools.explain import explain as run_explain

    try:
        res = run_explain(bundle, [str(p) for p in inputs], output, class_name=class_name,
                          stage=stage, bands=[b.strip() for b in bands.split(",")] if bands else None,
                          mode=mode, chunk=chunk, halo=halo, device=device, overwrite=overwrite)
    except GeofgError as e:
        raise _fail(e) from None
    what = (f"class {res.class_name} (p = {res.probability:.3f})" if res.mode == "chip"
            else f"class {res.class_name or 'predicted per pixel'}")
    out.print(f"Grad-CAM ({res.mode}, stage {res.stage}, {what}): {', '.join(res.outputs)}",
              highlight=False, soft_wrap=True)
