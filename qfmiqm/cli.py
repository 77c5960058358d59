"""The ``qfmiqm`` command line (typer). Every user error ends as one ``error: ...`` line."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import replace
import traceback
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from qfmiqm.errors import QfmiqmError, UsageError

app = typer.Typer(
    name="qfmiqm",
    help="No-reference image quality assessment (QFM-IQM / DEIQT). Scores: 0-100, higher is better.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DebugOpt = typer.Option(False, "--debug", help="Show full tracebacks for errors.")
RuntimeOpt = typer.Option("auto", "--runtime", help="auto (ONNX Runtime on CPU, PyTorch on CUDA), onnx or torch.")


def _err(message: str) -> None:
    typer.echo(message, err=True)


@contextlib.contextmanager
def user_errors(debug: bool) -> Iterator[None]:
    """Turn our errors into one stderr line and an exit code; tracebacks only with --debug."""
    try:
        yield
    except QfmiqmError as exc:
        if debug:
            traceback.print_exc()
        _err(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _err("error: interrupted")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback for users
        if debug:
            traceback.print_exc()
        _err(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)")
        raise typer.Exit(1) from None


def _version_callback(value: bool) -> None:
    if value:
        from qfmiqm import __version__

        typer.echo(f"qfmiqm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """qfmiqm: perceptual quality scores for images, offline."""


@app.command()
def score(
    paths: List[str] = typer.Argument(..., help="Image files, folders, glob patterns or URIs (s3://, gs://, file://)."),
    model: str = typer.Option("default", "--model", "-m", help="Model name (see 'qfmiqm models') or .safetensors checkpoint."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write results to FILE.csv, .json or .jsonl (columns path, score, error)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=0, help="Decoding worker processes (default: automatic)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into subfolders."),
    resume: bool = typer.Option(False, "--resume", help="Keep the rows already in --output and score only the rest."),
    num_crops: Optional[int] = typer.Option(None, "--num-crops", help="Score N fixed crops per image instead of the model's own layout (1, 5 or a square)."),
    runtime: str = RuntimeOpt,
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", min=1, help="Refuse images with more pixels than this."),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights", help="ImageNet weights file for backbones without packaged weights."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow pickled (non-safetensors) weight files."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
    decode: str = typer.Option("workers", "--decode", help="Where JPEGs are decoded: workers (Pillow, the same pixels everywhere) or device (nvJPEG on a GPU: faster, scores within about 1 point)."),
    map_dir: Optional[str] = typer.Option(None, "--map", help="Also save a quality-map overlay per scored image as DIR/<stem>.map.png (docs/quality-maps.md).", metavar="DIR"),
    map_data: bool = typer.Option(False, "--map-data", help="With --map: also write each map's values as DIR/<stem>.map.npy (float32, 0-100, one per 32-px cell)."),
    engine: str = typer.Option("local", "--engine", help="local (this machine) or ray (a Ray cluster, Ray Data; docs/distributed.md)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="--engine ray: the cluster to join (auto, HOST:PORT, ray://HOST:PORT; default: $RAY_ADDRESS, else a local Ray started for the run).", metavar="ADDR"),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", min=1, help="--engine ray: model workers (Ray actors; default: one per GPU, else one per --worker-cpus CPUs of the cluster)."),
    worker_cpus: Optional[float] = typer.Option(None, "--worker-cpus", min=0.01, help="--engine ray: CPUs per model worker, also its model's threads (default 1)."),
    worker_gpus: Optional[float] = typer.Option(None, "--worker-gpus", min=0.01, max=1.0, help="--engine ray: GPU share per model worker (default 1; 0.5 = two workers per GPU)."),
    report: Optional[str] = typer.Option(None, "--report", help="Also write a self-contained HTML report of the rows (as 'qfmiqm report'; docs/report.md).", metavar="FILE.html"),
    debug: bool = DebugOpt,
) -> None:
    """Score images: 0-100, higher is better. Prints CSV (path,score) unless --output is given.

    PATHS may also be URIs that pyarrow reads (s3://, gs://, file://).

    With --map DIR, each image is scored by the PyTorch pass that draws its quality map (for a
    whole-image model one backbone pass gives both) and its overlay is written as it goes.

    With --engine ray the job runs on a Ray cluster: same rows, scores and errors (docs/distributed.md).

    With --report FILE.html the rows (and --map overlays) also go into one HTML page (docs/report.md).

    Exit code 0: all scored; 1: some files failed (or their maps); 2: usage error.
    """
    from qfmiqm.data.sources import expand_inputs

    with user_errors(debug):
        if resume and output is None:
            raise UsageError("--resume needs --output FILE (the file to continue)")
        if map_data and map_dir is None:
            raise UsageError("--map-data needs --map DIR (the folder it writes to)")
        if report is not None:
            from qfmiqm.eval.html_report import check_report_path

            check_report_path(report)  # a bad report path fails before any scoring
        from qfmiqm.engines import ENGINES

        if engine not in ENGINES:
            raise UsageError(f"unknown engine '{engine}' (use {' or '.join(ENGINES)})")
        if engine == "ray":
            options = _ray_engine_options(workers, map_dir, ray_address, num_workers, worker_cpus, worker_gpus)
        elif any(v is not None for v in (ray_address, num_workers, worker_cpus, worker_gpus)):
            raise UsageError("--ray-address, --num-workers, --worker-cpus and --worker-gpus need --engine ray")
        items, duplicates = expand_inputs(paths, recursive=recursive)
        if not items:
            raise UsageError("no images found in the given paths")
        if duplicates:
            _err(f"note: {duplicates} duplicate path(s) given; each file is scored once")
        spec = _model_spec(model, device, runtime if map_dir is None else "torch", max_pixels, decode, num_crops,
                           backbone_weights, trust_pickle)
        if engine == "ray":
            scorer = _ray_engine(spec, options, debug)
        else:
            scorer = _local_engine(spec, workers, map_dir, map_data)
        maps = scorer
        if report is not None:
            from qfmiqm.eval.html_report import RecordingEngine

            scorer = RecordingEngine(scorer)
        failures = _score_to_output(scorer, items, output, resume, batch_size, progress and sys.stderr.isatty())
        map_failures = getattr(maps, "map_failures", 0)
        if report is not None:
            _score_report(report, output, scorer.results, map_dir)
    if failures:
        _err(f"{failures} of {len(items)} file(s) could not be scored")
    if map_failures:
        _err(f"{map_failures} quality map(s) could not be written")
    if failures or map_failures:
        raise typer.Exit(1)


def _score_report(report: str, output: Optional[str], results: list, map_dir: Optional[str]) -> None:
    """``score --report``: the HTML report of the output file (resumed rows included), or of this
    run's results when they went to stdout. Paths are as given, so relative to this folder."""
    from qfmiqm.eval.html_report import write_report
    from qfmiqm.outputs import read_results

    rows = read_results(output) if output is not None else results
    written = write_report(rows, report, bases=[Path.cwd()], maps_dir=map_dir, source=output or "")
    _err(f"report: {written.path}")


def _with_crops(model, num_crops: int):
    """``model`` scoring ``num_crops`` fixed crops per image (``--num-crops``)."""
    from qfmiqm.scoring import with_policy

    return with_policy(model, layout="crops", num_crops=num_crops)


def _model_spec(model, device, runtime, max_pixels, decode, num_crops, backbone_weights, trust_pickle):
    from qfmiqm.engines import ModelSpec

    return ModelSpec(model=model, device=device, runtime=runtime, max_pixels=max_pixels, decode=decode,
                     num_crops=num_crops, backbone_weights=backbone_weights, trust_pickle=trust_pickle)


def _local_engine(spec, workers: Optional[int], map_dir: Optional[str], map_data: bool = False):
    """The model loaded here (warning when it is untrained), wrapped as the local engine, or with
    ``map_dir`` as the map engine (each image scored by the pass that draws its map)."""
    from qfmiqm.engines.local import LocalEngine
    from qfmiqm.scoring import untrained_warning

    m = replace(spec, num_crops=None).load()
    if not m.card.trained:
        _err(f"warning: {untrained_warning(m.card)}")
    if spec.num_crops is not None:
        m = _with_crops(m, spec.num_crops)
    if map_dir is not None:
        from qfmiqm.engines.maps import MapEngine

        return MapEngine(m, map_dir, data=map_data, on_map_error=lambda p, e: _err(f"error: {p}: {e}"))
    return LocalEngine(m, workers=workers)


def _ray_engine_options(workers, map_dir, ray_address, num_workers, worker_cpus, worker_gpus) -> dict:
    """The Ray engine's options; usage errors for the local engine's own flags."""
    import os

    if workers is not None:
        raise UsageError("--workers (decoding processes) is for --engine local; with --engine ray use --num-workers")
    if map_dir is not None:
        raise UsageError("--map works with --engine local only")
    return {"address": ray_address or os.environ.get("RAY_ADDRESS") or None, "num_workers": num_workers,
            "worker_cpus": worker_cpus, "worker_gpus": worker_gpus}


def _ray_engine(spec, options: dict, debug: bool):
    """The Ray engine; the model is checked here (usage errors before any cluster starts)."""
    from qfmiqm.engines.ray_engine import RayEngine
    from qfmiqm.scoring import untrained_warning

    engine = RayEngine(spec, quiet=not debug, **options)
    card = spec.card()
    if card is not None and not card.trained:
        _err(f"warning: {untrained_warning(card)}")
    return engine


def _score_to_output(engine, items: list[str], output: Optional[str], resume: bool, batch_size: int,
                     progress: bool) -> int:
    """Score ``items`` into ``output`` row by row with ``engine`` (qfmiqm.engines); returns how
    many inputs have no score."""
    from qfmiqm.outputs import open_writer, prepare_resume

    previous = prepare_resume(output) if resume else {}
    failures = sum(1 for p in items if p in previous and not previous[p].ok)
    todo = [p for p in items if p not in previous]
    writer, stream = open_writer(output, append=bool(previous))
    try:
        for result in engine.run(todo, batch_size=batch_size, progress=progress):
            writer.write(result)
            if not result.ok:
                failures += 1
                _err(f"error: {result.path}: {result.error}")
    finally:
        writer.close()
        if stream is not sys.stdout:
            stream.close()
    return failures


@app.command("report")
def report_cmd(
    scores: str = typer.Argument(..., help="Score file from 'qfmiqm score' (.csv, .json, .jsonl or .parquet)."),
    out: str = typer.Option("report.html", "--out", "-o", help="The HTML file to write."),
    maps: Optional[str] = typer.Option(None, "--maps", help="Folder of 'score --map' overlays (<name>.map.png), shown beside each image.", metavar="DIR"),
    debug: bool = DebugOpt,
) -> None:
    """One self-contained HTML page for a score file: counts, failures, score histogram, the 24
    worst and 24 best images as thumbnails, median per subfolder. Opens offline (docs/report.md).

    Relative paths in the score file are looked up under its folder, then the current one.
    Exit code 0: written; 2: usage error (no such file, not a score file).
    """
    from qfmiqm.eval.html_report import report_from_file

    with user_errors(debug):
        written = report_from_file(scores, out, maps)
    typer.echo(f"report: {written.path} ({written.count:,} rows, {written.failed:,} failed, "
               f"{written.size_bytes / 1024:,.0f} KiB)")


@app.command("models")
def models_cmd(debug: bool = DebugOpt) -> None:
    """List models: name, backbone, weights present offline, what they were trained on."""
    from rich.console import Console
    from rich.table import Table

    from qfmiqm.models.registry import zoo_entries

    with user_errors(debug):
        table = Table(show_lines=False)
        for col in ("name", "backbone", "weights offline", "trained on"):
            table.add_column(col)
        for name, entry in zoo_entries().items():
            card = entry.card
            trained_on = card.training_data if card.trained else "UNTRAINED (not a quality model)"
            table.add_row(name, card.backbone, "yes" if entry.weights_present else "no", trained_on)
        console = Console(width=max(100, Console().width))
        console.print(table)
        for name, entry in zoo_entries().items():
            for limit in entry.card.limits:
                console.print(f"{name}: limit: {limit}", highlight=False, soft_wrap=True)


datasets_app = typer.Typer(
    help="Benchmark and user datasets: list them, check that their images are all there.",
    no_args_is_help=True,
)
app.add_typer(datasets_app, name="datasets")
RootOpt = typer.Option(None, "--root", help="Data root (default: $QFMIQM_DATA, else ./datasets); "
                                            "for a CSV, the folder its relative paths start from.")


@datasets_app.command("list")
def datasets_list(root: Optional[str] = RootOpt, debug: bool = DebugOpt) -> None:
    """The benchmarks and the user CSVs under the root: name, kind, images expected and found."""
    from rich.console import Console
    from rich.table import Table

    from qfmiqm.datasets import overview, resolve_root

    with user_errors(debug):
        table = Table(title=f"data root: {resolve_root(root)}", show_lines=False)
        for col in ("name", "kind", "expected", "found", "location"):
            table.add_column(col, justify="right" if col in ("expected", "found") else "left")
        for row in overview(root):
            table.add_row(row.name, row.kind, str(row.expected), str(row.found), row.note or row.location)
        Console(width=max(120, Console().width)).print(table)


@datasets_app.command("check")
def datasets_check(
    dataset: str = typer.Argument(..., help="Benchmark name (see 'qfmiqm datasets list') or a CSV/TSV file."),
    root: Optional[str] = RootOpt,
    decode: bool = typer.Option(False, "--decode", help="Decode every image fully (slower; also finds truncated files)."),
    path_column: Optional[str] = typer.Option(None, "--path-column", help="CSV only: the image path column (name or 0-based index)."),
    debug: bool = DebugOpt,
) -> None:
    """Count expected and found images; list missing and unreadable files. Exit 1 if incomplete."""
    from qfmiqm.datasets import check

    with user_errors(debug):
        report = check(dataset, root, decode=decode, path_column=path_column)
        layout = f" (layout: {report.layout.format(rel='...', name='<file>')})" if report.layout else ""
        typer.echo(f"dataset:    {report.name} ({report.kind})")
        typer.echo(f"folder:     {report.folder}{layout}")
        typer.echo(f"expected:   {report.expected}")
        typer.echo(f"found:      {report.found}")
        typer.echo(f"missing:    {len(report.missing)}")
        typer.echo(f"unreadable: {len(report.unreadable)}")
        for path in report.first_missing:
            typer.echo(f"  missing: {path}")
        if len(report.missing) > len(report.first_missing):
            typer.echo(f"  ... and {len(report.missing) - len(report.first_missing)} more missing")
        for path, reason in report.unreadable:
            typer.echo(f"  unreadable: {path}: {reason}")
    if not report.complete:
        _err(f"error: {report.summary()}")
        raise typer.Exit(1)
    typer.echo(report.summary())


from qfmiqm.data import synth_defaults as _synth_defaults  # noqa: E402 - defaults for the synth command's options


@app.command("synth")
def synth_cmd(
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output folder (created; a rerun continues it)."),
    src: Optional[str] = typer.Option(None, "--src", help="Folder of pristine images (default: the real photos shipped with scikit-image)."),
    types: Optional[List[str]] = typer.Option(None, "--types", "-t", help="Distortion types, comma-separated or repeated; groups: kadid (KADID-10k's 25), camera (the camera defects) (default: all; see --list-types)."),
    levels: str = typer.Option(str(_synth_defaults.DEFAULT_LEVELS), "--levels", help="N for levels 1..N, or a list such as 1,3,5."),
    seed: int = typer.Option(_synth_defaults.DEFAULT_SEED, "--seed", help="Random seed (crops, noise, patch positions)."),
    fmt: str = typer.Option(_synth_defaults.DEFAULT_FORMAT, "--format", help=f"Distorted image format: {', '.join(_synth_defaults.FORMAT_NAMES)} (references are always PNG)."),
    size: Optional[int] = typer.Option(None, "--size", help="Cut square crops of this side in pixels (default: whole images)."),
    crops: int = typer.Option(_synth_defaults.DEFAULT_CROPS, "--crops", help="Crops per source: 1 = centre crop, more = random positions (needs --size)."),
    crop_position: str = typer.Option("centre", "--crop-position", help="With one crop: 'centre' or 'random' (a seeded position, as several crops get)."),
    max_side: Optional[int] = typer.Option(None, "--max-side", help="First downscale sources whose longer side exceeds this many pixels."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Take --src images from subfolders too."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=0, help="Worker processes (default: one per CPU core; 0 = none)."),
    list_types: bool = typer.Option(False, "--list-types", help="Print the distortion types and their levels, then exit."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
    debug: bool = DebugOpt,
) -> None:
    """KADID-style distorted set from pristine images, with labels.csv (path, reference, type,
    level, score; proxy score 0-100 from full-reference metrics). See docs/synth.md.

    Exit code 0: all done; 1: some sources or images failed (each reported, the rest written); 2: usage error.
    """
    from qfmiqm.data import synth as _synth

    with user_errors(debug):
        if list_types:
            _print_distortions()
            return
        if out is None:
            raise UsageError("--out DIR is required (the folder to write the set into)")
        options = _synth.SynthOptions(types=_synth.parse_types(types), levels=_synth.parse_levels(levels),
                                      seed=seed, fmt=fmt.lower(), size=size, crops=crops, max_side=max_side,
                                      crop_position=crop_position)
        report = _synth.synthesize(out, src, options, recursive=recursive, workers=workers,
                                   progress=progress and sys.stderr.isatty(),
                                   on_error=lambda label, reason: _err(f"error: {label}: {reason}"))
    typer.echo(report.summary())
    if report.failures:
        _err(f"{len(report.failures)} source(s) or image(s) failed and were skipped")
        raise typer.Exit(1)


def _print_distortions() -> None:
    from rich.console import Console
    from rich.table import Table

    from qfmiqm.data.distortions import DISTORTIONS

    table = Table(show_lines=False)
    for col in ("type", "family", "KADID #", "levels 1..5", "parameter"):
        table.add_column(col)
    for d in DISTORTIONS.values():
        table.add_row(d.name, d.family, str(d.kadid_id or "-"), ", ".join(f"{p:g}" for p in d.params), d.unit)
    Console(width=max(110, Console().width)).print(table)


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: str = typer.Option(..., "--checkpoint", "-c", help="Model: zoo name or .safetensors checkpoint."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Benchmark name (see 'qfmiqm datasets list') or a CSV/TSV."),
    root: Optional[str] = typer.Option(None, "--root", help="Data root (default: $QFMIQM_DATA, else ./datasets)."),
    split_file: Optional[str] = typer.Option(None, "--split-file", help="Evaluate one side of a saved split (splits.json)."),
    split_index: int = typer.Option(0, "--split-index", min=0, help="Which split of the split file."),
    subset: str = typer.Option("test", "--subset", help="test, train, val or all (with --split-file)."),
    out: str = typer.Option("evaluation", "--out", "-o", help="Folder for predictions.csv, metrics.json, report.md, plots."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1),
    device: str = typer.Option("auto", "--device"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=0),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Evaluate on the images present when some are missing."),
    runtime: str = RuntimeOpt,
    debug: bool = DebugOpt,
) -> None:
    """Evaluate a model on a labelled dataset: SRCC, PLCC (raw and fitted), KRCC, RMSE, report and plots."""
    from qfmiqm.data.datasets import load as load_dataset
    from qfmiqm.eval.evaluate import evaluate, load_model_quietly, select_items

    with user_errors(debug):
        ds = load_dataset(dataset, root=root, allow_missing=allow_missing)
        if ds.dropped:
            _err(f"note: {ds.dropped} image(s) of '{ds.name}' are missing and were left out (--allow-missing)")
        ds = select_items(ds, split_file, split_index, subset, allow_missing)
        model = load_model_quietly(checkpoint, device=device, runtime=runtime)
        result = evaluate(model, ds, out, batch_size=batch_size, workers=workers,
                          progress=sys.stderr.isatty(), on_error=lambda p, e: _err(f"error: {p}: {e}"))
        m = result.report.metrics
        typer.echo(f"{model.name} on {ds.name} ({m['n']} images): SRCC {m['srcc']:.4f}  PLCC {m['plcc']:.4f}  "
                   f"PLCC(fit) {m['plcc_fit']:.4f}  KRCC {m['krcc']:.4f}  RMSE {m['rmse']:.3f}")
        typer.echo(f"report: {Path(out) / 'report.md'}")
    if result.failed:
        _err(f"{result.failed} image(s) could not be scored and were left out of the metrics")
        raise typer.Exit(1)


@app.command("diagnose")
def diagnose_cmd(
    checkpoint: str = typer.Option(..., "--checkpoint", "-c", help="Model: zoo name or .safetensors checkpoint."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Benchmark name or a CSV/TSV."),
    root: Optional[str] = typer.Option(None, "--root"),
    k: int = typer.Option(5, "--k", min=1, help="Neighbours per image."),
    thresholds: str = typer.Option("5,10,20,30", "--thresholds", help="Quality differences (0-100 scale)."),
    out: str = typer.Option("diagnose", "--out", "-o", help="Folder for diagnose.json and diagnose.png."),
    split_file: Optional[str] = typer.Option(None, "--split-file", help="Diagnose one side of a saved split (splits.json), e.g. a protocol's."),
    split_index: int = typer.Option(0, "--split-index", min=0, help="Which split of the split file."),
    subset: str = typer.Option("test", "--subset", help="test, train, val or all (with --split-file)."),
    device: str = typer.Option("auto", "--device"),
    allow_missing: bool = typer.Option(False, "--allow-missing"),
    debug: bool = DebugOpt,
) -> None:
    """Semantic noise: share of feature-space nearest neighbours whose quality differs by more than a threshold."""
    from qfmiqm.data.datasets import load as load_dataset
    from qfmiqm.eval.diagnose import format_table
    from qfmiqm.eval.evaluate import diagnose, load_model_quietly, select_items

    with user_errors(debug):
        try:
            levels = [float(t) for t in thresholds.split(",") if t.strip()]
        except ValueError:
            raise UsageError(f"--thresholds '{thresholds}': expected numbers separated by commas") from None
        ds = select_items(load_dataset(dataset, root=root, allow_missing=allow_missing), split_file, split_index,
                          subset, allow_missing)
        model = load_model_quietly(checkpoint, device=device, runtime="torch")  # it reads the network's features
        table = diagnose(model, ds, out, k=k, thresholds=levels)
        typer.echo(format_table(table))
        typer.echo(f"saved: {Path(out) / 'diagnose.json'}, {Path(out) / 'diagnose.png'}")


@app.command("train")
def train_cmd(
    config: str = typer.Option(..., "--config", "-c", help="YAML config (configs/*.yaml; '_base_:' inheritance)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="Override a key: --set optim.lr=1e-4 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the run directory from its last valid checkpoint."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory (default: <out.dir>/<out.name>)."),
    root: Optional[str] = typer.Option(None, "--root", help="Data root (same as --set data.root=DIR)."),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights", help="ImageNet backbone weights (same as --set model.backbone_weights=FILE)."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Train on the images present when some are missing (same as --set data.allow_missing=true)."),
    debug: bool = DebugOpt,
) -> None:
    """Train a model (one split) as the config says; docs/training.md lists every key.

    Writes the run directory (config, splits, metrics.csv, TensorBoard events, checkpoints) and
    the best model as <run>/best.safetensors (score with: qfmiqm score --model <run>/best.safetensors).
    Works under torchrun for multi-GPU / multi-node training. Exit code 0: done; 2: bad config;
    130: stopped by a signal (checkpoint written; continue with --resume).
    """
    import os

    from qfmiqm.train.engine import run_training
    from qfmiqm.train.schema import load_train_config

    with user_errors(debug):
        overrides = list(set_ or [])
        if root is not None:
            overrides.append(f"data.root={root}")
        if backbone_weights is not None:
            overrides.append(f"model.backbone_weights={backbone_weights}")
        if allow_missing:
            overrides.append("data.allow_missing=true")
        cfg = load_train_config(config, overrides)
        result = run_training(cfg, run_dir=out, resume=resume)
    if result.complete and result.best_model is not None and os.environ.get("RANK", "0") == "0":
        typer.echo(f"best model: {result.best_model}")


@app.command("protocol")
def protocol_cmd(
    config: List[str] = typer.Option(..., "--config", "-c", help="Training config (YAML); repeat to compare methods on the same splits (the first is the baseline)."),
    splits: int = typer.Option(10, "--splits", min=1, help="Number of random 80/20 splits."),
    cross: Optional[str] = typer.Option(None, "--cross", help="Cross-dataset matrix instead: comma-separated datasets (names or CSVs)."),
    out: str = typer.Option("protocol", "--out", "-o", help="Folder for splits, runs and result tables (rerun to resume)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config key for every config, e.g. optim.epochs=3."),
    debug: bool = DebugOpt,
) -> None:
    """The papers' protocol in one command: train/test on N splits, median SRCC/PLCC table (and ablation)."""
    from qfmiqm.eval.protocol import Method, run_cross, run_protocol
    from qfmiqm.train.schema import load_train_config

    with user_errors(debug):
        methods = [Method(Path(c).stem, load_train_config(c, list(set_))) for c in config]
        if cross:
            if len(methods) != 1:
                raise UsageError("--cross takes exactly one --config")
            names = [n.strip() for n in cross.split(",") if n.strip()]
            run_cross(methods[0], names, out, say=_err)
            typer.echo((Path(out) / "cross.md").read_text())
            return
        result = run_protocol(methods, splits, out, say=_err)
        typer.echo(result.table)
        typer.echo(f"results: {Path(out) / 'results.md'}")


@app.command("search")
def search_cmd(
    config: str = typer.Option(..., "--config", "-c", help="Training config (YAML) the candidates change."),
    param: List[str] = typer.Option(..., "--param", "-p", help="KEY=V1,V2,... values to try, e.g. qfm.match_tau=2,5,10; repeat per key."),
    split_file: str = typer.Option(..., "--split-file", help="A protocol's splits.json: the search trains on these splits' training sides."),
    split: str = typer.Option("0,1,2", "--split", help="Comma-separated split indices whose validation sides rank the candidates."),
    budget: int = typer.Option(8, "--budget", min=1, help="Candidates to train: the base config + a seeded random draw from the grid."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random draw."),
    out: str = typer.Option("search", "--out", "-o", help="Folder for the runs and search.json/search.md (rerun to resume)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config key for every candidate, e.g. optim.epochs=3."),
    debug: bool = DebugOpt,
) -> None:
    """Hyperparameter search on validation sides only (test sides are never evaluated)."""
    from qfmiqm.eval.search import parse_param, run_search
    from qfmiqm.train.schema import load_train_config

    with user_errors(debug):
        base = load_train_config(config, list(set_))
        grid = dict(parse_param(p) for p in param)
        try:
            indices = [int(v) for v in split.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"--split '{split}': expected comma-separated split indices, e.g. 0,1,2") from None
        result = run_search(base, grid, split_file, indices, out, budget, seed, say=_err)
        typer.echo(result.table)
        typer.echo(f"best: {result.best['overrides'] or 'the base config'} "
                   f"(median val SRCC {result.best['median_val_srcc']:.4f}); {Path(out) / 'search.json'}")


@app.command("bench")
def bench_cmd(
    model: str = typer.Option("default", "--model", "-m", help="Model name or .safetensors checkpoint."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1),
    images: int = typer.Option(64, "--images", "-n", min=1, help="Images per throughput measurement."),
    size: str = typer.Option("640x480", "--size", help="Image size WxH of the generated JPEGs."),
    device: str = typer.Option("auto", "--device"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=0),
    memory: str = typer.Option("", "--memory", help="SMALL,LARGE: RSS growth between scoring SMALL and LARGE images, e.g. 1000,10000."),
    num_crops: Optional[int] = typer.Option(None, "--num-crops", help="Override the model's crops per image (as in 'qfmiqm score')."),
    decode: str = typer.Option("workers", "--decode", help="Where JPEGs are decoded: workers or device (as in 'qfmiqm score')."),
    runtime: str = RuntimeOpt,
    debug: bool = DebugOpt,
) -> None:
    """Throughput of the model vs its backbone's limit (ratios b/a, c/a), peak RSS and memory growth."""
    from qfmiqm.bench import run_bench
    from qfmiqm.eval.evaluate import load_model_quietly

    with user_errors(debug):
        try:
            w, h = (int(v) for v in size.lower().split("x"))
            mem = tuple(int(v) for v in memory.split(",")) if memory else None
        except ValueError:
            raise UsageError(f"--size '{size}' / --memory '{memory}': expected WxH and SMALL,LARGE") from None
        if mem is not None and len(mem) != 2:
            raise UsageError("--memory takes two numbers: SMALL,LARGE")
        m = load_model_quietly(model, device=device, decode=decode, runtime=runtime)
        if num_crops is not None:
            m = _with_crops(m, num_crops)
        result = run_bench(m, images=images, batch_size=batch_size, size=(w, h), workers=workers, memory_images=mem)
        for line in result.lines():
            typer.echo(line)


@app.command("export")
def export_cmd(
    model: str = typer.Option("default", "--model", "-m", help="Model name (see 'qfmiqm models') or .safetensors checkpoint."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="Export format: onnx."),
    out: str = typer.Option(..., "--out", "-o", help="File to write (.onnx)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version (17 to 20)."),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights", help="ImageNet weights file for backbones without packaged weights."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow pickled (non-safetensors) weight files."),
    debug: bool = DebugOpt,
) -> None:
    """Export a model to ONNX (dynamic batch; model card in the file's metadata). See docs/export.md.

    The file scores on its own (qfmiqm score --model FILE.onnx); it is written only once onnxruntime reproduces PyTorch's scores.

    Exit code 0: written; 1: the export failed; 2: usage error.
    """
    from qfmiqm.export import export_model

    with user_errors(debug):
        result = export_model(model, out, fmt=fmt, opset=opset, backbone_weights=backbone_weights,
                              trust_pickle=trust_pickle)
    typer.echo(result.summary())


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
