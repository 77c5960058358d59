"""The Ray engine vs the local engine on this machine: `python benchmarks/ray_speed.py [--images 2000]`.

Both engines score the same generated JPEGs (qfmiqm.bench.make_images: crops of the sample photos)
in one run: first the local engine (decoding workers + the model in this process), then the Ray
engine on a local Ray started here with every core (model actors of --worker-cpus CPUs each).
Printed: images/s of each, the ratio ray/local, Ray's start-up time (not in its images/s), the
largest score difference between the engines, and the load average around each measurement (the
machine may be shared). docs/distributed.md records what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _timed_run(engine, paths, batch_size):
    start = time.perf_counter()
    first = None
    results = []
    for r in engine.run(paths, batch_size=batch_size):
        if first is None:
            first = time.perf_counter()
        results.append(r)
    end = time.perf_counter()
    return results, end - start, end - (first or end)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", "-n", type=int, default=2000)
    parser.add_argument("--size", default="500x375", help="WxH of the generated JPEGs")
    parser.add_argument("--batch-size", "-b", type=int, default=16)
    parser.add_argument("--model", "-m", default="default")
    parser.add_argument("--workers", type=int, default=None, help="local engine: decoding processes (default: auto)")
    parser.add_argument("--num-workers", type=int, default=None, help="Ray engine: model actors (default: CPUs / worker-cpus)")
    parser.add_argument("--worker-cpus", type=float, default=None, help="Ray engine: CPUs per actor (default 1)")
    parser.add_argument("--folder", default=None, help="where the images are made (kept; reused when complete)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    import ray

    from qfmiqm.bench import cpu_name, make_images
    from qfmiqm.engines import ModelSpec, create_engine

    w, h = (int(v) for v in args.size.lower().split("x"))
    tmp = None
    if args.folder:
        folder = Path(args.folder)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="qfmiqm-ray-bench-")
        folder = Path(tmp.name)
    paths = sorted(str(p) for p in folder.glob("bench_*.jpg"))[: args.images]
    if len(paths) < args.images:
        print(f"making {args.images} JPEGs of {w}x{h} in {folder} ...", file=sys.stderr)
        paths = make_images(folder, args.images, (w, h))

    spec = ModelSpec(model=args.model, device="cpu")
    report: dict = {"images": len(paths), "size": f"{w}x{h}", "batch_size": args.batch_size,
                    "cpu": cpu_name(), "cores": os.cpu_count()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        local = create_engine("local", spec, workers=args.workers)
    report["load_before_local"] = _load()
    local_results, local_s, _ = _timed_run(local, paths, args.batch_size)
    report["load_after_local"] = _load()
    del local

    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    report["ray_start_s"] = round(time.perf_counter() - start, 2)
    try:
        engine = create_engine("ray", spec, num_workers=args.num_workers, worker_cpus=args.worker_cpus)
        device, actors, per_actor = engine.resources(ray)
        report["ray_actors"], report["ray_actor_resources"] = actors, per_actor
        report["load_before_ray"] = _load()
        ray_results, ray_s, ray_after_first_s = _timed_run(engine, paths, args.batch_size)
        report["load_after_ray"] = _load()
    finally:
        ray.shutdown()
    if tmp is not None:
        tmp.cleanup()

    assert [r.path for r in ray_results] == [r.path for r in local_results], "the engines gave different rows"
    deltas = [abs(a.score - b.score) for a, b in zip(local_results, ray_results) if a.ok and b.ok]
    report.update({
        "local_s": round(local_s, 2), "local_img_s": round(len(paths) / local_s, 2),
        "ray_s": round(ray_s, 2), "ray_img_s": round(len(paths) / ray_s, 2),
        "ray_first_result_s": round(ray_s - ray_after_first_s, 2),
        "ratio_ray_over_local": round(local_s / ray_s, 3),
        "max_abs_score_delta": max(deltas) if deltas else None,
        "failed": sum(not r.ok for r in ray_results),
    })
    print(f"{len(paths)} images {w}x{h}, batch {args.batch_size}, {report['cores']} cores ({report['cpu']})")
    print(f"local engine: {report['local_img_s']:.2f} img/s ({local_s:.1f} s; load avg {report['load_before_local']} "
          f"-> {report['load_after_local']})")
    print(f"ray engine:   {report['ray_img_s']:.2f} img/s ({ray_s:.1f} s incl. actor start-up; {actors} actor(s) "
          f"{per_actor}; load avg {report['load_before_ray']} -> {report['load_after_ray']}); "
          f"Ray start {report['ray_start_s']:.1f} s not counted")
    print(f"ray engine: first result after {ray_s - ray_after_first_s:.1f} s (actor start-up and the first batches)")
    print(f"ratio ray/local: {report['ratio_ray_over_local']:.3f}x; max |score delta| {report['max_abs_score_delta']:.2e}; "
          f"failed {report['failed']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
