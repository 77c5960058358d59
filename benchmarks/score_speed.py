"""Scoring throughput vs the backbone limit and memory growth: `python benchmarks/score_speed.py [args]`
is `qfmiqm bench [args]` (see qfmiqm/bench.py)."""
import sys

from qfmiqm.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]])
