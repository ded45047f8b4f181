"""`mscreen experiment ...`: the paper's experiments at CPU scale; outputs under reports/<name>/.

Needs the ``train`` extra (PyTorch): `mscreen experiment` (cli/train.py) imports this module on
use, so the service install's CLI starts without it. Every command writes a CSV,
a Markdown table (``summary.md``), ``summary.json`` and PNG figures, and prints where they are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from cli.common import parse_channel_list
from hardware.sim import SimulationConfig
from training.experiments import (
    LEARNING_CURVE_SIZES,
    CVSettings,
    ModelSpec,
    SimulatedSettings,
    cv_experiment,
    learning_curve_experiment,
    plate_eval_experiment,
    read_learning_curve_rows,
    write_learning_curve_report,
    ws_k_grid_experiment,
)
from training.imagesets import CELLTYPE_GROUP_PATTERN
from training.reports import write_csv
from training.trainer import TrainConfig, check_architecture, check_device

logger = logging.getLogger(__name__)

experiment_cli = typer.Typer(
    help="Reproduce the paper's experiments (small defaults; flags scale them up).",
    no_args_is_help=True,
)

OutOption = Annotated[
    Path | None, typer.Option("--out", help="Output folder (default: reports/<experiment>).")
]
ModelOption = Annotated[str, typer.Option("--model", help="Registered network.")]
WidthOption = Annotated[
    int | None, typer.Option("--width", help="base_width of resnet18 / vgg11 (default 16).")
]
EpochsOption = Annotated[int, typer.Option("--epochs", min=1, help="Maximum training epochs.")]
PatienceOption = Annotated[int, typer.Option("--patience", min=1, help="Early-stop patience.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of splits, plates and training.")]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", min=1, help="Processes preparing images.")
]
ThreadsOption = Annotated[int, typer.Option("--threads", min=0, help="Torch threads (0 = auto).")]
DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        help="Training device: cpu (deterministic), cuda, or auto (CUDA when torch sees a GPU).",
    ),
]
TestPlatesOption = Annotated[
    int, typer.Option("--test-plates", min=1, help="Held-out simulated test plates.")
]
TrainPlatesOption = Annotated[
    int, typer.Option("--train-plates", min=1, help="Simulated training plates (96 wells each).")
]


def _spec(model: str, width: int | None) -> ModelSpec:
    try:
        check_architecture(model)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--model") from error
    return ModelSpec(model, {} if width is None or model == "scnn" else {"base_width": width})


def _done(name: str, out: Path, started: float) -> None:
    typer.echo(f"{name}: wrote {out}/ in {time.perf_counter() - started:.0f} s")
    for path in sorted(out.iterdir()):
        typer.echo(f"  {path}")


def _simulated(
    model: str,
    width: int | None,
    epochs: int,
    patience: int,
    seed: int,
    workers: int | None,
    threads: int,
    train_plates: int,
    *,
    test_plates: int = 1,
    device: str = "cpu",
) -> SimulatedSettings:
    _check_device(device)
    return SimulatedSettings(
        train_plates=train_plates,
        test_plates=test_plates,
        simulation=SimulationConfig(seed=seed),
        model=_spec(model, width),
        train=TrainConfig(
            epochs=epochs, patience=patience, seed=seed, threads=threads, device=device
        ),
        workers=workers,
    )


def _check_device(device: str) -> None:
    try:
        check_device(device)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--device") from error


_CV = CVSettings()  # the cv defaults (the celltype winner), shown in --help


def _channel_tuple(text: str | None) -> tuple[int, ...] | None:
    picked = parse_channel_list(text)
    return tuple(picked) if picked is not None else None


@experiment_cli.command("cv")
def cv(
    data: Annotated[
        Path,
        typer.Option(
            "--data", exists=True, file_okay=False, help="ImageFolder root: <data>/<class>/<img>."
        ),
    ],
    folds: Annotated[int, typer.Option("--folds", min=2, help="Grouped folds.")] = _CV.folds,
    size: Annotated[
        int, typer.Option("--size", min=16, help="Pipeline height = width.")
    ] = _CV.size,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="Regex on file stems naming the group; 'celltype' = <line>-<field>; "
            "default: every image its own group.",
        ),
    ] = None,
    preprocess: Annotated[
        str,
        typer.Option(
            "--preprocess",
            help="Features: 'standardise' (per-image, per-channel standardised raw frame at "
            "full bit depth), 'mean_v_clahe' (the paper's 8-bit mean-V 130 + CLAHE + bands) or "
            "'auto' (standardise for >8-bit or multi-channel files, else mean_v_clahe).",
        ),
    ] = _CV.preprocess,
    bit_depth: Annotated[
        int | None,
        typer.Option(
            "--bit-depth",
            min=8,
            max=16,
            help="Significant bits of 16-bit files (default: from the metadata, else inferred).",
        ),
    ] = None,
    channels: Annotated[
        str | None,
        typer.Option(
            "--channels",
            help="0-based channels to use, comma-separated (default: all; two or more train "
            "one band per channel).",
        ),
    ] = None,
    ws: Annotated[
        int,
        typer.Option("--ws", min=1, help="SSCD window (mean_v_clahe only; 1 = no SSN)."),
    ] = _CV.ws,
    k: Annotated[int, typer.Option("--k", min=2, help="SSN count (with --ws > 1).")] = _CV.k,
    tta: Annotated[
        bool, typer.Option("--tta/--no-tta", help="Average test calls over the 8 symmetries.")
    ] = _CV.tta,
    keep_last: Annotated[
        bool,
        typer.Option(
            "--keep-last/--early-stop",
            help="Keep the last (EMA) weights, or stop early on the validation split's loss.",
        ),
    ] = not _CV.train.restore_best,
    schedule: Annotated[
        str, typer.Option("--schedule", help="cosine, warmup_cosine or onecycle.")
    ] = _CV.train.schedule,
    label_smoothing: Annotated[
        float, typer.Option("--label-smoothing", min=0.0, max=0.5, help="0 = off.")
    ] = _CV.train.label_smoothing,
    ema: Annotated[
        float,
        typer.Option("--ema", min=0.0, max=0.9999, help="EMA decay of the weights (0 = off)."),
    ] = _CV.train.ema_decay,
    learning_rate: Annotated[
        float, typer.Option("--lr", min=0.0, help="AdamW rate.")
    ] = _CV.train.learning_rate,
    model: Annotated[
        str, typer.Option("--model", help="Registered network of the default arm.")
    ] = _CV.model.name,
    width: WidthOption = None,
    width_multiplier: Annotated[
        float | None,
        typer.Option("--width-multiplier", min=0.1, help="SCNN width multiplier."),
    ] = None,
    depth: Annotated[
        int | None, typer.Option("--depth", min=1, help="SCNN blocks per stage.")
    ] = None,
    references: Annotated[
        bool,
        typer.Option(
            "--references/--no-references",
            help="Also run the plain CNN and the logistic-regression floor on the same folds.",
        ),
    ] = _CV.references,
    legacy: Annotated[
        bool,
        typer.Option("--legacy", help="Also run the old default (SCNN + HSM, 112 px)."),
    ] = False,
    extra_models: Annotated[
        list[str] | None,
        typer.Option(
            "--also", help="Also run this registered network with the default recipe (repeat)."
        ),
    ] = None,
    epochs: EpochsOption = _CV.train.epochs,
    patience: PatienceOption = _CV.train.patience,
    seed: SeedOption = 0,
    seeds: Annotated[
        int, typer.Option("--seeds", min=1, help="Seeds (seed .. seed + N - 1): mean +- sd.")
    ] = 1,
    reference_epochs: Annotated[
        int, typer.Option("--reference-epochs", min=1, help="Epochs of the plain CNN.")
    ] = _CV.reference_train.epochs,
    reference_seeds: Annotated[
        int | None,
        typer.Option(
            "--reference-seeds", min=1, help="Seeds of the plain CNN (default: all of --seeds)."
        ),
    ] = None,
    workers: WorkersOption = None,
    threads: ThreadsOption = 0,
    device: DeviceOption = "cpu",
    out: OutOption = None,
) -> None:
    """Grouped k-fold cross-validation on a two-class ImageFolder dataset: the default recipe,
    the plain reference CNN and the pixel logistic-regression floor on the same folds."""
    started = time.perf_counter()
    _check_device(device)
    if preprocess not in ("auto", "standardise", "mean_v_clahe"):
        raise typer.BadParameter(
            f"expected auto, standardise or mean_v_clahe, got {preprocess!r}",
            param_hint="--preprocess",
        )
    if preprocess == "standardise" and ws != 1:
        raise typer.BadParameter(
            "--ws > 1 (SSN) needs --preprocess mean_v_clahe", param_hint="--ws"
        )
    spec = _spec(model, width)
    if model == "scnn":
        spec.options = dict(_CV.model.options) if _CV.model.name == "scnn" else {}
        if width_multiplier is not None:
            spec.options["width_multiplier"] = width_multiplier
        if depth is not None:
            spec.options["depth"] = depth
    elif width_multiplier is not None or depth is not None:
        raise typer.BadParameter(
            "--width-multiplier / --depth apply to --model scnn", param_hint="--model"
        )
    pattern = CELLTYPE_GROUP_PATTERN if group_by == "celltype" else group_by
    try:
        train = replace(
            _CV.train,
            epochs=epochs,
            patience=patience,
            seed=seed,
            threads=threads,
            learning_rate=learning_rate,
            restore_best=not keep_last,
            device=device,
            schedule=schedule,  # type: ignore[arg-type]
            label_smoothing=label_smoothing,
            ema_decay=ema,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    settings = CVSettings(
        folds=folds,
        size=size,
        preprocess=preprocess,  # type: ignore[arg-type]
        ws=ws,
        k=k,
        seed=seed,
        seeds=seeds,
        workers=workers,
        group_by=pattern,
        bit_depth=bit_depth,
        channels=_channel_tuple(channels),
        tta=tta,
        model=spec,
        train=train,
        references=references,
        reference_train=replace(
            _CV.reference_train, epochs=reference_epochs, threads=threads, device=device
        ),
        reference_seeds=reference_seeds,
        legacy=legacy,
        extra_models=[_spec(name, width) for name in extra_models or []],
    )
    out = out or Path("reports") / "cv"
    try:
        cv_experiment(data, out, settings)
    except ValueError as error:  # a dataset the user can fix: one line, exit code 2
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    _done("cv", out, started)


@experiment_cli.command("plate-eval")
def plate_eval(
    train_plates: TrainPlatesOption = 3,
    model: ModelOption = "scnn",
    width: WidthOption = None,
    epochs: EpochsOption = 20,
    patience: PatienceOption = 6,
    seed: SeedOption = 0,
    workers: WorkersOption = None,
    threads: ThreadsOption = 0,
    test_plates: TestPlatesOption = 1,
    device: DeviceOption = "cpu",
    out: OutOption = None,
) -> None:
    """Train on simulated plates; seven metrics + 95 % CIs, ROC and calibration (ECE of the raw
    and the validation-fitted calibrated P(high), reliability table) on held-out plates."""
    started = time.perf_counter()
    settings = _simulated(
        model,
        width,
        epochs,
        patience,
        seed,
        workers,
        threads,
        train_plates,
        test_plates=test_plates,
        device=device,
    )
    out = out or Path("reports") / "plate-eval"
    summary = plate_eval_experiment(out, settings)
    calibration = summary["calibration"]
    calibrated = calibration["ece_calibrated"]
    typer.echo(
        f"ECE ({calibration['bins']} bins): raw {calibration['ece_raw']:.3f}, calibrated "
        + (f"{calibrated:.3f} ({calibration['method']})" if calibrated is not None else "-")
    )
    _done("plate-eval", out, started)


@experiment_cli.command("ws-k-grid")
def ws_k_grid(
    ws: Annotated[list[int] | None, typer.Option("--ws", help="WS values (repeat).")] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="K values (repeat).")] = None,
    train_plates: TrainPlatesOption = 2,
    model: ModelOption = "scnn",
    width: WidthOption = None,
    epochs: EpochsOption = 15,
    patience: PatienceOption = 5,
    seed: SeedOption = 0,
    workers: WorkersOption = None,
    threads: ThreadsOption = 0,
    test_plates: TestPlatesOption = 1,
    device: DeviceOption = "cpu",
    out: OutOption = None,
) -> None:
    """Accuracy over the SSCD window WS and SSN count K (expensive: scale with the flags)."""
    started = time.perf_counter()
    settings = _simulated(
        model,
        width,
        epochs,
        patience,
        seed,
        workers,
        threads,
        train_plates,
        test_plates=test_plates,
        device=device,
    )
    out = out or Path("reports") / "ws-k-grid"
    ws_k_grid_experiment(out, settings, ws_values=ws or [1, 5, 9], k_values=k or [4, 12])
    _done("ws-k-grid", out, started)


@experiment_cli.command("learning-curve")
def learning_curve(
    sizes: Annotated[
        list[int] | None,
        typer.Option("--sizes", min=2, help="Training image counts (repeat; default 20..100)."),
    ] = None,
    seeds: Annotated[
        list[int] | None, typer.Option("--seeds", help="Seeds (repeat; default 0..4).")
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option("--model", help="Registered networks (repeat; default scnn)."),
    ] = None,
    width: WidthOption = None,
    train_plates: TrainPlatesOption = 2,
    test_plates: TestPlatesOption = 2,
    epochs: EpochsOption = 30,
    patience: PatienceOption = 8,
    min_epoch_samples: Annotated[
        int | None,
        typer.Option(
            "--min-epoch-samples",
            min=0,
            help="Samples per epoch at least (default: the largest size, so every size gets "
            "the same optimizer steps per epoch).",
        ),
    ] = None,
    workers: WorkersOption = None,
    threads: ThreadsOption = 0,
    device: DeviceOption = "cpu",
    from_csv: Annotated[
        Path | None,
        typer.Option(
            "--from-csv",
            exists=True,
            dir_okay=False,
            help="Train nothing: rebuild the tables and figures from this curve.csv (e.g. a run "
            "stopped by a time limit, or made on another machine).",
        ),
    ] = None,
    note: Annotated[
        str, typer.Option("--note", help="With --from-csv: how and where the runs were made.")
    ] = "",
    out: OutOption = None,
) -> None:
    """Accuracy, training time and size of each network against the number of training
    images, mean +- sd over seeds (expensive: a full run is 9 sizes x 5 seeds per network)."""
    started = time.perf_counter()
    if from_csv is not None:
        out = out or from_csv.parent
        try:
            rows = read_learning_curve_rows(from_csv)
        except ValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from error
        if from_csv.resolve() != (out / "curve.csv").resolve():
            write_csv(rows, out / "curve.csv")
        write_learning_curve_report(
            out, rows, description=note or f"Rebuilt from {from_csv.name}.", extra={"note": note}
        )
        _done("learning-curve", out, started)
        return
    names = models or ["scnn"]
    specs = [_spec(name, width) for name in names]
    sizes = sizes or list(LEARNING_CURVE_SIZES)
    settings = _simulated(
        names[0],
        width,
        epochs,
        patience,
        0,
        workers,
        threads,
        train_plates,
        test_plates=test_plates,
        device=device,
    )
    settings.train = replace(
        settings.train,
        min_epoch_samples=max(sizes) if min_epoch_samples is None else min_epoch_samples,
    )
    out = out or Path("reports") / "learning-curve"
    try:
        learning_curve_experiment(
            out,
            settings,
            sizes=sizes,
            seeds=seeds if seeds is not None else [0, 1, 2, 3, 4],
            models=specs,
        )
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    _done("learning-curve", out, started)
