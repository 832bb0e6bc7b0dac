"""How fast the app answers, measured on the handlers the UI calls (in-process, no browser).

Printed (median of ``--repeat`` runs after one warm-up), as wall time and as this process's CPU
time (all threads):

* first analysis: a new session (no cached unpruned forward) loads the image, runs the unpruned
  and the pruned forward and renders every view the page shows (token map, depth map, method
  panels, segmentation pair and change map, tables, the three plotly charts), and the outputs
  are handed over the way Gradio ships them (arrays PNG-encoded, files hashed and copied into
  its cache, figures to JSON);
* re-run after a parameter change: the same session, another value of one parameter (``--vary``): the cached prefix is
  reused, every view is redrawn and handed over;
* live estimate: the MAC readout that follows a slider while it moves.

On a machine shared with other jobs the wall time measures the neighbours too; the CPU time does
not, and the wall time on an idle machine lies between CPU / threads and CPU. The model is built
once, when ``app`` is imported. Targets (demo backbone, 512 x 512, 2 cores): first analysis
<= 1.5 s, re-run <= 0.5 s, live estimate ~0.1 s.

Run: ``python bench/bench_app.py [--repeat 5] [--threads 2] [--method lvtp] [--layers 6] [--vary rate=0.3,0.6]
[--image PATH]``.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def encode_outputs(values: tuple, cache: Path) -> int:
    """What Gradio does with the outputs before sending them: arrays are PNG-encoded (zlib level
    6), files (the app writes its maps as PNG files) are hashed and copied into its cache, figures
    become JSON. Returns the bytes produced."""
    import hashlib

    from PIL import Image

    total = 0
    for v in values:
        items = v if isinstance(v, tuple) else (v,)
        for item in items:
            if isinstance(item, np.ndarray) and item.ndim == 3:
                buf = io.BytesIO()
                Image.fromarray(item).save(buf, format="png")
                total += buf.tell()
            elif isinstance(item, str) and item.endswith(".png") and Path(item).is_file():
                data = Path(item).read_bytes()
                folder = cache / hashlib.sha256(data).hexdigest()
                folder.mkdir(exist_ok=True)
                shutil.copy2(item, folder / Path(item).name)
                total += len(data)
            elif isinstance(getattr(item, "plot", None), str):  # gr.Plot data, already JSON
                total += len(item.plot)
            elif hasattr(item, "to_json"):
                total += len(item.to_json())
    return total


def timed(fn, repeat: int) -> tuple[float, list[float], float]:
    """(median wall ms, every wall ms, median CPU ms of this process) after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), wall, statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--method", default="lvtp")
    p.add_argument("--layers", default="6")
    p.add_argument("--vary", default="rate=0.3,0.6", help="the parameter the re-runs alternate, e.g. threshold=0.9,0.95")
    p.add_argument("--image", type=Path, default=None, help="default: a 512 x 512 synthetic scene")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    import app  # noqa: F401 - builds the page and the default model, as a server start does
    from prune_viz.ui.session import Session
    from prune_viz.webapp import glue, handlers

    import_s = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="bench_app_"))
    glue.UPLOAD_ROOTS = (*glue.UPLOAD_ROOTS, str(work))  # the bench's scene stands in for an upload
    if args.image is None:
        import cv2

        from prune_viz.data.synthetic import make_scene

        image, _ = make_scene(11, 512, "mixed")
        path = work / "scene.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    else:
        path = args.image
    cache = work / "cache"
    cache.mkdir()

    layers = [int(x) for x in args.layers.split(",")]
    defaults = {k: c.default for k, c in zip(handlers.PARAM_KEYS, handlers.CONTROLS)}
    name, _, choices = args.vary.partition("=")
    vary_key = f"p:{args.method}:{name}"
    if vary_key not in defaults:
        p.error(f"{args.method} has no parameter {name!r}; use --vary NAME=a,b")
    alternatives = [float(v) for v in choices.split(",")]

    def params(value: float | None = None) -> list:
        values = dict(defaults)
        if value is not None:
            values[vary_key] = value
        return [values[k] for k in handlers.PARAM_KEYS]

    def analyze(session, value: float | None = None) -> tuple:
        return handlers.on_analyze(session, "demo", 1024, args.method, layers, 0, layers[0], *params(value))

    def first() -> None:
        session = Session()
        handlers.on_upload(session, str(path), 1, 2, 3, 2.0, 98.0)
        encode_outputs(analyze(session), cache)

    session = Session()
    handlers.on_upload(session, str(path), 1, 2, 3, 2.0, 98.0)
    analyze(session)
    rates = iter(np.tile(alternatives, 1000))

    def rerun() -> None:
        encode_outputs(analyze(session, float(next(rates))), cache)

    def estimate() -> None:
        text = handlers.on_estimate(session, "demo", 1024, args.method, layers, 0, layers[0], *params(float(next(rates))))
        assert "live estimate" in text, text  # not an inline error message

    rows = [
        ("first analysis (all views, handed over)", *timed(first, args.repeat)),
        ("re-run after a parameter change", *timed(rerun, args.repeat)),
        ("live estimate", *timed(estimate, args.repeat)),
    ]
    sent = encode_outputs(analyze(session, 0.5), cache)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"demo backbone, {args.method} at layers {layers} ({name} alternating {alternatives}), {path.name}, "
          f"{args.threads} threads, load average {load:.2f}")
    print(f"  import app (builds the default model): {import_s:.1f} s; one re-run sends {sent / 1e6:.2f} MB")
    print(f"  {'':42s} {'wall median':>12s} {'CPU median':>12s}   wall runs (ms)")
    for name, wall, runs, cpu in rows:
        print(f"  {name:42s} {wall:9.0f} ms {cpu:9.0f} ms   {[round(t) for t in runs]}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
