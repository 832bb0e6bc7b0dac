"""Many users at once: does the app stay up, answer everyone, and keep their results apart?

Starts ``python app.py`` as its own process (or uses ``--url``) and, through ``gradio_client``
and the public ``/analyze`` endpoint:

1. **alone**: runs every request of the test once, one at a time: the reference answers;
2. **together**: ``--sessions`` clients (each its own ``gradio_client.Client``, in its own
   thread) send their ``--requests`` requests each, all at once; every answer must equal the
   same request's answer alone (the report's MACs, metrics and the ``digest`` of every token
   decision and segmentation; timing fields left out) — a mismatch would be one user's result
   leaking into another's, or shared state mutated by a concurrent run;
3. **memory**: the server's resident set size (VmRSS; its peak, VmHWM) after each phase, and
   the growth from the first to the last of ``--rounds`` rounds of phase 2;
4. **busy**: ``--burst`` requests submitted at once, more than the queue holds: those beyond it
   must be refused at once with Gradio's "Queue is full ... try again", every other one must be
   answered correctly.

Latency is per request as the client sees it (upload + queue wait + run + download).

Run: ``python bench/bench_load.py [--sessions 16] [--requests 5] [--rounds 2] [--burst 64]
[--queue-size 32] [--workers 2] [--session-capacity N]``. The server inherits them as
``PRUNE_VIZ_QUEUE_SIZE`` / ``PRUNE_VIZ_WORKERS`` / ``PRUNE_VIZ_SESSIONS``. Every round opens
``--sessions`` new Gradio sessions: Gradio's per-session bookkeeping is what grows the RSS
from round to round until ``--session-capacity`` sessions are held.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# What a user of the demo backbone can ask for: (backbone, method, layers, params JSON).
SETTINGS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("demo", "none", "", {}),
    ("demo", "random", "4", {"rate": 0.5}),
    ("demo", "random", "3,8", {"rate": 0.3}),
    ("demo", "evit", "6", {"rate": 0.4}),
    ("demo", "lvtp", "6", {}),
    ("demo", "lvtp", "3", {"rate": 0.4, "q1": 2.0}),
    ("demo", "lvtp", "6,9", {"rate": 0.5, "entropy": "shannon"}),
    ("demo", "dtop", "", {}),
    ("demo", "dtop", "3,6", {"threshold": 0.95}),
    ("demo_matp", "matp", "", {}),
]


@dataclass(frozen=True)
class Request:
    """One /analyze call: image, settings, seed, with or without the ground-truth mask."""

    image: str
    backbone: str
    method: str
    layers: str
    params: str
    seed: int
    mask: str | None

    def label(self) -> str:
        return f"{Path(self.image).stem}/{self.backbone}/{self.method}@{self.layers or 'default'}/{self.params}/seed{self.seed}"


@dataclass
class Outcome:
    request: Request
    ok: bool
    seconds: float
    result: dict | None = None
    error: str = ""


@dataclass
class Phase:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    rss_mb: float = 0.0
    hwm_mb: float = 0.0
    wall_s: float = 0.0


def examples(folder: Path = ROOT / "examples") -> list[tuple[str, str | None]]:
    """(image, mask or None) for every example scene."""
    out = []
    for image in sorted(folder.glob("*.png")):
        if image.stem.endswith("_mask"):
            continue
        mask = image.with_name(f"{image.stem}_mask.png")
        out.append((str(image), str(mask) if mask.is_file() else None))
    return out


def make_requests(n: int, scenes: list[tuple[str, str | None]]) -> list[Request]:
    """``n`` distinct requests cycling through scenes and settings (seed and mask vary too)."""
    combos = itertools.product(range(n), SETTINGS, scenes)
    out = []
    for i, (seed, (backbone, method, layers, params), (image, mask)) in enumerate(combos):
        if i >= n:
            break
        out.append(Request(image, backbone, method, layers, json.dumps(params), seed, mask if i % 2 == 0 else None))
    if len(set(out)) != len(out):
        raise ValueError("requests are not distinct; add settings or scenes")
    return out


def comparable(report: dict) -> dict:
    """A report without the fields that measure time (they differ from run to run)."""
    out = json.loads(json.dumps(report))
    out.pop("latency_ms", None)
    for step in out.get("steps", []):
        step.pop("decide_ms", None)
    return out


def call(client: Any, req: Request) -> Outcome:
    from gradio_client import handle_file

    t0 = time.perf_counter()
    try:
        result = client.predict(handle_file(req.image), req.backbone, req.method, req.layers, req.params, req.seed,
                                handle_file(req.mask) if req.mask else None, api_name="/analyze")
        return Outcome(req, True, time.perf_counter() - t0, result=result)
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported, none is fatal here
        return Outcome(req, False, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")


def client_for(url: str) -> Any:
    from gradio_client import Client

    return Client(url, verbose=False)


def run_alone(url: str, requests: list[Request]) -> list[Outcome]:
    client = client_for(url)
    return [call(client, r) for r in requests]


def run_together(url: str, per_session: list[list[Request]]) -> list[Outcome]:
    """One client and one thread per session, all started together; each sends its requests in turn."""
    results: list[list[Outcome]] = [[] for _ in per_session]
    start = threading.Barrier(len(per_session))

    def session(i: int) -> None:
        try:
            client = client_for(url)
        except Exception as exc:  # noqa: BLE001
            results[i] = [Outcome(r, False, 0.0, error=f"client: {exc}") for r in per_session[i]]
            start.wait()
            return
        start.wait()
        results[i] = [call(client, r) for r in per_session[i]]

    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(per_session))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [o for rs in results for o in rs]


def burst(url: str, requests: list[Request]) -> list[Outcome]:
    """Submit every request at once from one client (no waiting between them)."""
    from gradio_client import handle_file

    client = client_for(url)
    jobs, t0 = [], time.perf_counter()
    for r in requests:
        jobs.append(client.submit(handle_file(r.image), r.backbone, r.method, r.layers, r.params, r.seed,
                                  handle_file(r.mask) if r.mask else None, api_name="/analyze"))
    out = []
    for r, job in zip(requests, jobs):
        try:
            out.append(Outcome(r, True, time.perf_counter() - t0, result=job.result(timeout=600)))
        except Exception as exc:  # noqa: BLE001
            out.append(Outcome(r, False, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"))
    return out


def mismatches(outcomes: list[Outcome], reference: dict[Request, dict]) -> list[str]:
    """'label: where it differs' for answered requests whose result differs from the same request alone."""
    out = []
    for o in outcomes:
        if o.ok:
            where = differences(comparable(o.result), comparable(reference[o.request]))
            if where:
                out.append(f"{o.request.label()}: {'; '.join(where[:4])}")
    return out


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths (with both values) where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path or '.'} {a!r} != {b!r} alone"]


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a Linux process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(queue_size: int, workers: int, timeout_s: float = 180.0, log: Path | None = None,
                 session_capacity: int | None = None) -> tuple[subprocess.Popen, str]:
    """``python app.py`` on a free local port, with the shipped demo model as a user gets it;
    returns (process, url) once it answers. Its output goes to ``log`` (never to an unread pipe,
    which would fill up and block the server mid-request)."""
    import urllib.request

    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               PRUNE_VIZ_QUEUE_SIZE=str(queue_size), PRUNE_VIZ_WORKERS=str(workers),
               GRADIO_ANALYTICS_ENABLED="False")
    env.pop("PRUNE_VIZ_DEMO_WEIGHTS", None)
    if session_capacity is not None:
        env["PRUNE_VIZ_SESSIONS"] = str(session_capacity)
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}" + (f"; see {log}" if log else ""))
        try:
            with urllib.request.urlopen(url + "config", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"app.py did not answer within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def summary(phase: Phase) -> str:
    secs = [o.seconds for o in phase.outcomes if o.ok]
    errors = [o for o in phase.outcomes if not o.ok]
    lat = (f"p50 {statistics.median(secs):.2f} s, p95 {percentile(secs, 95):.2f} s, max {max(secs):.2f} s"
           if secs else "no answers")
    return (f"{phase.name:<14} {len(phase.outcomes):>4} requests in {phase.wall_s:6.1f} s: {len(errors)} errors; "
            f"latency {lat}; server RSS {phase.rss_mb:.0f} MiB (peak {phase.hwm_mb:.0f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--requests", type=int, default=5, help="per session")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the concurrent phase (memory growth between them)")
    ap.add_argument("--burst", type=int, default=64, help="requests submitted at once to overflow the queue (0: skip)")
    ap.add_argument("--queue-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--session-capacity", type=int, help="sessions Gradio remembers (PRUNE_VIZ_SESSIONS; app default 200)")
    ap.add_argument("--url", help="an app already running (memory is then not reported)")
    ap.add_argument("--log", type=Path, default=Path("runs/bench_load_server.log"))
    args = ap.parse_args(argv)

    scenes = examples()
    requests = make_requests(args.sessions * args.requests, scenes)
    per_session = [requests[i::args.sessions] for i in range(args.sessions)]
    proc = None
    if args.url:
        url = args.url
    else:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        proc, url = start_server(args.queue_size, args.workers, log=args.log, session_capacity=args.session_capacity)
    phases: list[Phase] = []

    def phase(name: str, fn) -> Phase:
        t0 = time.perf_counter()
        ph = Phase(name, fn())
        ph.wall_s = time.perf_counter() - t0
        if proc is not None:
            ph.rss_mb, ph.hwm_mb = memory_mb(proc.pid)
        phases.append(ph)
        print(summary(ph), flush=True)
        return ph

    try:
        if proc is not None:
            rss, _ = memory_mb(proc.pid)
            print(f"server started: RSS {rss:.0f} MiB; {len(requests)} distinct requests over {len(scenes)} scenes, "
                  f"queue size {args.queue_size}, {args.workers} model workers", flush=True)
        alone = phase("alone", lambda: run_alone(url, requests))
        reference = {o.request: o.result for o in alone.outcomes if o.ok}
        crossed: list[str] = []
        for k in range(args.rounds):
            ph = phase(f"together #{k + 1}", lambda: run_together(url, per_session))
            crossed += mismatches(ph.outcomes, reference)
        refused: list[Outcome] = []
        if args.burst:
            ph = phase("burst", lambda: burst(url, [requests[i % len(requests)] for i in range(args.burst)]))
            refused = [o for o in ph.outcomes if not o.ok]
            crossed += mismatches(ph.outcomes, reference)
    finally:
        if proc is not None:
            stop_server(proc)

    errors = [o for ph in phases if ph.name != "burst" for o in ph.outcomes if not o.ok]
    print()
    print(f"errors (alone + together): {len(errors)}")
    for o in errors[:5]:
        print(f"  {o.request.label()}: {o.error.splitlines()[0] if o.error else ''}")
    n_checked = sum(1 for ph in phases if ph.name != "alone" for o in ph.outcomes if o.ok)
    print(f"answers compared with the same request alone: {n_checked}; different: {len(crossed)}")
    for label in crossed[:5]:
        print(f"  differs: {label}")
    if proc is not None and len(phases) > 2:
        together = [ph for ph in phases if ph.name.startswith("together")]
        served = len(phases[0].outcomes) + sum(len(ph.outcomes) for ph in together)
        print(f"server RSS after {served} requests: {together[-1].rss_mb:.0f} MiB (peak {together[-1].hwm_mb:.0f}); "
              f"growth over the last {len(together) - 1} round(s): {together[-1].rss_mb - together[0].rss_mb:+.0f} MiB")
    if args.burst:
        queue_msgs = [o for o in refused if "queue is full" in o.error.lower()]
        other = [o for o in refused if o not in queue_msgs]
        print(f"burst of {args.burst}: {args.burst - len(refused)} answered, {len(queue_msgs)} refused as busy "
              f"({queue_msgs[0].error.splitlines()[0] if queue_msgs else '-'}), {len(other)} other errors")
        for o in other[:3]:
            print(f"  {o.error.splitlines()[0]}")
    bad = bool(errors or crossed or (args.burst and any("queue is full" not in o.error.lower() for o in refused)))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
