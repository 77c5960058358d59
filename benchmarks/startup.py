"""Start-up cost of the command line: wall time and peak RSS of short commands, each run in a
fresh process, as a user meets them.

    python benchmarks/startup.py [--repeats 5] [--image samples/chelsea.jpg]

Prints, per command, the median and best wall time over the repeats, the largest peak RSS, and
whether the process imported torch. Goals (issue 21): ``--version`` and ``--help`` under 0.5 s;
``score one.jpg`` with the default model on a CPU under 1.5 s and 400 MB, torch not imported.
The first ``score`` builds the model's ONNX graph into the cache (once per model and runtime
version); it is run once before timing and reported apart.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: run the console script's entry point and report whether torch got imported, on stderr
PROBE = ("import sys\nfrom qfmiqm.cli import main\nsys.argv = ['qfmiqm', *sys.argv[1:]]\n"
         "try:\n    main()\nfinally:\n    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n")


def run(args: list[str]) -> tuple[float, float, bool]:
    """(wall seconds, peak RSS MB, torch imported) of one fresh process."""
    time_bin = shutil.which("time") or "/usr/bin/time"
    cmd = [time_bin, "-f", "RSS_KB %M", sys.executable, "-c", PROBE, *args]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"error: qfmiqm {' '.join(args)} failed:\n{out.stderr}")
    rss_kb = next(int(line.split()[1]) for line in out.stderr.splitlines() if line.startswith("RSS_KB"))
    return wall, rss_kb / 1024, "torch imported: True" in out.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--image", default=str(ROOT / "samples" / "chelsea.jpg"))
    args = ap.parse_args()
    if not os.path.exists("/usr/bin/time") and not shutil.which("time"):
        raise SystemExit("error: /usr/bin/time not found (Debian: apt-get install time)")
    commands = {"--version": ["--version"], "--help": ["--help"], "score one.jpg": ["score", args.image]}
    first = run(commands["score one.jpg"])
    print(f"{'first score (may build the ONNX graph)':<40} {first[0]:6.2f} s  {first[1]:6.0f} MB  torch {first[2]}")
    for name, argv in commands.items():
        runs = [run(argv) for _ in range(args.repeats)]
        walls = [r[0] for r in runs]
        print(f"{name:<40} median {statistics.median(walls):5.2f} s  best {min(walls):5.2f} s  "
              f"peak RSS {max(r[1] for r in runs):5.0f} MB  torch imported: {any(r[2] for r in runs)}")


if __name__ == "__main__":
    main()
