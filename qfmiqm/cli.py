"""The ``qfmiqm`` command line (typer). Every user error ends as one ``error: ...`` line."""
from __future__ import annotations

import contextlib
import sys
import traceback
import warnings
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
    paths: List[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    model: str = typer.Option("default", "--model", "-m", help="Model name (see 'qfmiqm models') or .safetensors checkpoint."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write results to FILE.csv, .json or .jsonl (columns path, score, error)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=0, help="Decoding worker processes (default: automatic)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into subfolders."),
    resume: bool = typer.Option(False, "--resume", help="Keep the rows already in --output and score only the rest."),
    num_crops: Optional[int] = typer.Option(None, "--num-crops", help="Override the model's crops per image (1, 5 or a square)."),
    max_pixels: int = typer.Option(100_000_000, "--max-pixels", min=1, help="Refuse images with more pixels than this."),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights", help="ImageNet weights file for backbones without packaged weights."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow pickled (non-safetensors) weight files."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
    debug: bool = DebugOpt,
) -> None:
    """Score images: 0-100, higher is better. Prints CSV (path,score) unless --output is given.

    Exit code 0: all scored; 1: some files failed; 2: usage error.
    """
    from qfmiqm.data.sources import expand_inputs
    from qfmiqm.scoring import load, untrained_warning

    with user_errors(debug):
        if resume and output is None:
            raise UsageError("--resume needs --output FILE (the file to continue)")
        items, duplicates = expand_inputs(paths, recursive=recursive)
        if not items:
            raise UsageError("no images found in the given paths")
        if duplicates:
            _err(f"note: {duplicates} duplicate path(s) given; each file is scored once")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            m = load(model, device=device, backbone_weights=backbone_weights,
                     trust_pickle=trust_pickle, max_pixels=max_pixels)
        if not m.card.trained:
            _err(f"warning: {untrained_warning(m.card)}")
        if num_crops is not None:
            m.card = _with_crops(m.card, num_crops)
        failures = _score_to_output(m, items, output, resume, batch_size, workers,
                                    progress and sys.stderr.isatty())
    if failures:
        _err(f"{failures} of {len(items)} file(s) could not be scored")
        raise typer.Exit(1)


def _with_crops(card, num_crops: int):
    from dataclasses import replace

    return replace(card, input=card.input.replace(num_crops=num_crops))


def _score_to_output(m, items: list[str], output: Optional[str], resume: bool, batch_size: int,
                     workers: Optional[int], progress: bool) -> int:
    """Score ``items`` into ``output`` row by row; returns how many inputs have no score."""
    from qfmiqm.outputs import open_writer, prepare_resume

    previous = prepare_resume(output) if resume else {}
    failures = sum(1 for p in items if p in previous and not previous[p].ok)
    todo = [p for p in items if p not in previous]
    writer, stream = open_writer(output, append=bool(previous))
    try:
        for result in m.iter_scores(todo, batch_size=batch_size, workers=workers, progress=progress):
            writer.write(result)
            if not result.ok:
                failures += 1
                _err(f"error: {result.path}: {result.error}")
    finally:
        writer.close()
        if stream is not sys.stdout:
            stream.close()
    return failures


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
            trained_on = card.training_data if card.trained else "UNTRAINED placeholder (not a quality model)"
            table.add_row(name, card.backbone, "yes" if entry.weights_present else "no", trained_on)
        Console(width=max(100, Console().width)).print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
