"""Training progress: a rich progress bar (epoch, step, ETA, loss) on a terminal, plain log
lines every ``log_every`` steps otherwise. Every message also goes to ``<run>/train.log``."""
from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Optional, TextIO


def _fmt_eta(seconds: float) -> str:
    return str(timedelta(seconds=int(max(0.0, seconds))))


class Progress:
    """Rank 0's reporter; other ranks get ``enabled=False`` and print nothing."""

    def __init__(self, enabled: bool = True, bar: Optional[bool] = None, log_every: int = 20,
                 stream: Optional[TextIO] = None):
        self.enabled = enabled
        self.stream = stream = stream if stream is not None else sys.stderr
        self.bar_on = enabled and (stream.isatty() if bar is None else bar)
        self.log_every = log_every
        self.logfile: Optional[TextIO] = None
        self._bar = None
        self._task = None
        self._t0 = 0.0
        self._start_step = 0

    def attach_log(self, path: Path) -> None:
        """Also append every message (and the plain step lines) to ``path``, console or not."""
        self.logfile = open(path, "a", encoding="utf-8")

    def message(self, text: str) -> None:
        self._to_file(text)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def _to_file(self, text: str) -> None:
        if self.logfile is not None:
            self.logfile.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            self.logfile.flush()

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self._epoch, self._epochs, self._steps = epoch, epochs, steps
        self._t0, self._start_step = time.perf_counter(), done
        if not self.bar_on:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._bar = RichProgress(TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=Console(file=self.stream), transient=False)
        self._task = self._bar.add_task("train", total=steps, completed=done, info="")
        self._bar.start()

    def step(self, done: int, logs: dict[str, float], lr: float) -> None:
        info = f"loss {logs.get('loss', float('nan')):.4f} lr {lr:.2e}"
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=info)
        if done % self.log_every == 0 or done == self._steps:
            rate = (time.perf_counter() - self._t0) / max(1, done - self._start_step)
            parts = " ".join(f"{k} {v:.4g}" for k, v in logs.items() if k not in ("loss", "lr"))
            line = (f"epoch {self._epoch + 1}/{self._epochs} step {done}/{self._steps} {info} "
                    f"eta {_fmt_eta(rate * (self._steps - done))} ({parts})")
            self._to_file(line)
            if self.enabled and self._bar is None:
                print(line, file=self.stream, flush=True)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def close(self) -> None:
        self.end_epoch()
        if self.logfile is not None:
            self.logfile.close()
            self.logfile = None
