"""Where the felt latency of bench/bench_browser.py goes: one timeline per action.

Starts ``python app.py`` under a small tracer (Gradio's ``Blocks.process_api`` and
``call_function`` timed per event, the JSON each event returns measured) and drives headless
chromium through the same actions as ``bench_browser.py`` (fresh page, "Run again", switch
method, live readout), logging every request the page makes (queue joins, files, assets, with their sizes).
For each action it prints, in ms from the action: every event's server span (queued -> handler
start -> handler end -> results out) with its handler, the bytes of its result, the files the
page fetched, and when the page showed the result.

    python bench/trace_browser.py [--threads 2] [--repeat 2]

Not a benchmark (the tracer adds a little); a map of where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_browser as bb  # noqa: E402
from bench import bench_load as load  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Run inside the server process: wraps Gradio's event path and appends one JSON line per event.
TRACER = r"""
import json, os, runpy, sys, time
import gradio.blocks as gb
log = open(os.environ["PRUNE_VIZ_TRACE"], "a", buffering=1)
_api, _call = gb.Blocks.process_api, gb.Blocks.call_function
def _name(bf):
    bf = bf if not isinstance(bf, int) else None
    return getattr(getattr(bf, "fn", None), "__name__", "?") if bf else "?"
async def process_api(self, block_fn, inputs, *a, **k):
    t0 = time.time()
    out = await _api(self, block_fn, inputs, *a, **k)
    t1 = time.time()
    try:
        size = len(json.dumps(out.get("data"), default=str))
    except Exception:
        size = -1
    log.write(json.dumps({"what": "api", "fn": _name(block_fn), "t0": t0, "t1": t1, "bytes": size}) + "\n")
    return out
async def call_function(self, block_fn, *a, **k):
    t0 = time.time()
    out = await _call(self, block_fn, *a, **k)
    log.write(json.dumps({"what": "call", "fn": _name(block_fn), "t0": t0, "t1": time.time()}) + "\n")
    return out
gb.Blocks.process_api, gb.Blocks.call_function = process_api, call_function
for _stage in ("preprocess_data", "postprocess_data"):
    def _wrap(orig, stage=_stage):
        async def timed(self, block_fn, *a, **k):
            t0 = time.time()
            out = await orig(self, block_fn, *a, **k)
            log.write(json.dumps({"what": stage, "fn": _name(block_fn), "t0": t0, "t1": time.time()}) + "\n")
            return out
        return timed
    setattr(gb.Blocks, _stage, _wrap(getattr(gb.Blocks, _stage)))
import gradio.queueing as gq
_push, _events = gq.Queue.push, gq.Queue.process_events
async def push(self, *a, **k):
    log.write(json.dumps({"what": "push", "t0": time.time()}) + "\n")
    return await _push(self, *a, **k)
_seen = []
async def process_events(self, events, *a, **k):
    log.write(json.dumps({"what": "start", "t0": time.time(), "fn": _name(events[0].fn)}) + "\n")
    if not _seen:
        _seen.append(set(sys.modules))
        out = await _events(self, events, *a, **k)
        new = sorted(set(sys.modules) - _seen[0])
        log.write(json.dumps({"what": "imports", "t0": time.time(), "new": new}) + "\n")
        return out
    return await _events(self, events, *a, **k)
gq.Queue.push, gq.Queue.process_events = push, process_events
if os.environ.get("PRUNE_VIZ_TRACE_IMPORT"):  # who imports this module first (a stack in the log)
    import traceback
    class _Who:
        def find_spec(self, name, path=None, target=None):
            if name == os.environ["PRUNE_VIZ_TRACE_IMPORT"]:
                log.write(json.dumps({"what": "imported", "t0": time.time(), "stack": traceback.format_stack()[-60:]}) + "\n")
            return None
    sys.meta_path.insert(0, _Who())
sys.argv = ["app.py"]
runpy.run_path("app.py", run_name="__main__")
"""


def start(trace: Path, threads: int) -> tuple[subprocess.Popen, str]:
    port = load.free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), PRUNE_VIZ_TRACE=str(trace),
               GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS=str(threads))
    env.pop("PRUNE_VIZ_DEMO_WEIGHTS", None)
    out = open(trace.with_suffix(".log"), "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-c", TRACER], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    import urllib.request

    for _ in range(360):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited; see {trace.with_suffix('.log')}")
        try:
            with urllib.request.urlopen(url + "config", timeout=5):
                return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("server did not answer")


class Net:
    """Every request the page makes, with its start, end and body size (wall clock, s)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def attach(self, page) -> None:
        page.on("requestfinished", self._done)

    def _done(self, request) -> None:
        try:
            sizes = request.sizes()
            body = sizes.get("responseBodySize", 0)
        except Exception:  # noqa: BLE001 - a streaming response has none
            body = -1
        timing = request.timing
        start = timing["startTime"] / 1e3
        post = request.post_data or ""
        fn = ""
        if "queue/join" in request.url and post:
            fn = f"fn{json.loads(post).get('fn_index')}"
        self.rows.append({"url": request.url.split("?")[0], "t0": start, "t1": time.time(), "bytes": body, "fn": fn})


def timeline(name: str, t0: float, t_done: float, trace: Path, net: Net, since: int) -> None:
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    api = [e for e in events if e["what"] == "api" and e["t1"] >= t0 - 0.05]
    calls = [e for e in events if e["what"] == "call" and e["t1"] >= t0 - 0.05]
    print(f"\n== {name}: shown at {1e3 * (t_done - t0):.0f} ms")
    for e in sorted(api, key=lambda e: e["t0"]):
        call = next((c for c in calls if c["fn"] == e["fn"] and c["t0"] >= e["t0"] - 1e-3 and c["t1"] <= e["t1"] + 1e-3), None)
        inner = f"handler {1e3 * (call['t1'] - call['t0']):6.0f}" if call else " " * 14
        for stage in ("preprocess_data", "postprocess_data"):
            st = next((c for c in events if c["what"] == stage and c["fn"] == e["fn"] and c["t0"] >= e["t0"] - 1e-3
                       and c["t1"] <= e["t1"] + 1e-3), None)
            inner += f" {stage[:4]} {1e3 * (st['t1'] - st['t0']):4.0f}" if st else ""
        print(f"  api {1e3 * (e['t0'] - t0):7.0f} -> {1e3 * (e['t1'] - t0):7.0f} ms  {inner}  {e['bytes']:>8} B  {e['fn']}")
    marks = [e for e in events if e["what"] in ("push", "start") and e["t0"] >= t0 - 0.05 and e["t0"] <= t_done]
    print("  queue: " + ", ".join(f"{e['what']} {1e3 * (e['t0'] - t0):.0f}" for e in marks))
    rows = [r for r in net.rows[since:] if r["t0"] >= t0 - 0.05]
    files = [r for r in rows if "/file=" in r["url"] and "/examples/" not in r["url"]]
    joins = [r for r in rows if "queue/join" in r["url"]]
    other = [r for r in rows if r not in files and r not in joins]
    print(f"  joins {len(joins)}: " + ", ".join(f"{1e3 * (r['t0'] - t0):.0f}" for r in joins))
    print(f"  files {len(files)}, {sum(max(r['bytes'], 0) for r in files) / 1e3:.0f} kB: "
          + ", ".join(f"{r['url'].rsplit('.', 1)[-1]} {r['bytes'] / 1e3:.0f}k@{1e3 * (r['t1'] - t0):.0f}" for r in files))
    if other:
        print(f"  other {len(other)}, {sum(max(r['bytes'], 0) for r in other) / 1e3:.0f} kB, last done at "
              f"{1e3 * (max(r['t1'] for r in other) - t0):.0f} ms; largest:")
        for r in sorted(other, key=lambda r: -r["bytes"])[:6]:
            print(f"    {r['bytes'] / 1e3:6.0f} kB  {1e3 * (r['t0'] - t0):5.0f} -> {1e3 * (r['t1'] - t0):5.0f} ms  {r['url'][-70:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    trace = ROOT / "runs" / "trace_browser.jsonl"
    trace.parent.mkdir(exist_ok=True)
    trace.write_text("")
    proc, url = start(trace, args.threads)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=bb.CHROMIUM, args=bb.ARGS)
            for i in range(args.repeat):
                context = browser.new_context(viewport={"width": 1600, "height": 1100})
                page = context.new_page()
                net = Net()
                net.attach(page)
                t0 = time.time()
                page.goto(url, timeout=120_000)
                page.locator("#readout").get_by_text(bb.DONE).wait_for(timeout=120_000)
                timeline(f"fresh page #{i + 1}", t0, time.time(), trace, net, 0)
                bb.quiet(page)
                if i == args.repeat - 1:
                    break
                context.close()
            for i in range(args.repeat):
                bb.quiet(page)
                n = len(net.rows)
                ms = bb.run_again(page)
                t1 = time.time()
                timeline(f"run again #{i + 1} ({ms:.0f} ms in page)", t1 - ms / 1e3, t1, trace, net, n)
            for i, m in enumerate(["random", "lvtp"][: args.repeat] * 1):
                bb.quiet(page)
                n = len(net.rows)
                ms = bb.switch_method(page, m)
                t1 = time.time()
                timeline(f"switch to {m} ({ms:.0f} ms in page)", t1 - ms / 1e3, t1, trace, net, n)
            if m != "lvtp":
                bb.switch_method(page, "lvtp")
            for i, v in enumerate([0.3, 0.8, 0.3][: max(args.repeat, 2)]):
                bb.quiet(page, 0.5)
                n = len(net.rows)
                ms = bb.drag(page, v)
                t1 = time.time()
                timeline(f"drag #{i + 1} ({ms:.0f} ms in page)", t1 - ms / 1e3, t1, trace, net, n)
            bb.quiet(page)
            browser.close()
    finally:
        load.stop_server(proc)
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
