"""The map engine: ``qfmiqm score --map``, each image scored by the pass that draws its map.

One image at a time in this process (PyTorch: maps need the network's modules). The image is
decoded once; for a model that scores the whole image in one view (``layout: whole``, no tiles)
the backbone runs once and both the score and the map come from that pass
(``qfmiqm.eval.quality_map.quality_map``); for a crop model the score still comes from its own
views of the same decoded image. The overlay (and with ``data`` the ``.npy``) is written before
the image's result is yielded, so a killed run leaves no row without its map.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from qfmiqm.errors import ImageError, UsageError
from qfmiqm.results import ScoreResult


class MapEngine:
    """Scores and maps with a PyTorch ``QualityModel`` loaded in this process.

    ``on_map_error(path, reason)`` hears of an image that was scored but whose map could not be
    written (its row still has the score); ``map_failures`` counts them."""

    name = "maps"

    def __init__(self, model: Any, folder: str | os.PathLike, data: bool = False,
                 on_map_error: Callable[[str, str], None] | None = None):
        from qfmiqm.eval.quality_map import prepare_map_dir, supports_maps

        if not supports_maps(model):
            raise UsageError("--map needs a PyTorch model (a .safetensors checkpoint or zoo name, not ONNX)")
        self.model = model
        self.folder = prepare_map_dir(folder)
        self.data = data
        self.on_map_error = on_map_error or (lambda path, reason: None)
        self.map_failures = 0

    def run(self, items: Sequence[str], batch_size: int = 0, progress: bool = False) -> Iterator[ScoreResult]:
        """One ``ScoreResult`` per item, in input order (``batch_size`` is not used: one image
        at a time)."""
        from qfmiqm.eval.map_names import map_filenames
        from qfmiqm.scoring import _progress_bar

        names = map_filenames(items)
        bar = _progress_bar(len(items)) if progress else None
        try:
            for path in items:
                yield self._one(path, self.folder / names[path])
                if bar is not None:
                    bar.advance(1)
        finally:
            if bar is not None:
                bar.stop()

    def _one(self, path: str, target: Path) -> ScoreResult:
        from qfmiqm.eval.quality_map import quality_map, write_map_files

        try:
            qmap = quality_map(self.model, path)
        except Exception as exc:  # noqa: BLE001 - one image's map must not stop the others
            # no map (e.g. too large for one pass, or a bad file): the score, if it has one
            return self._score_only(path, _map_error(exc))
        try:
            write_map_files(qmap, target, data=self.data)
        except Exception as exc:  # noqa: BLE001
            self._map_failed(path, _map_error(exc))
        return ScoreResult(path, qmap.score)

    def _score_only(self, path: str, map_error: str) -> ScoreResult:
        result = next(iter(self.model.iter_scores([path], batch_size=1, workers=0)))
        if result.ok:
            self._map_failed(path, map_error)
        return result

    def _map_failed(self, path: str, reason: str) -> None:
        self.map_failures += 1
        self.on_map_error(path, reason)


def _map_error(exc: BaseException) -> str:
    """The one-line reason a map was not written."""
    if isinstance(exc, MemoryError):
        return "quality map not written: out of memory"
    if isinstance(exc, (ImageError, UsageError, OSError, ValueError)):
        return f"quality map not written: {exc}"
    return f"quality map not written ({type(exc).__name__}: {exc})"
