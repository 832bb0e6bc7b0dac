"""Hostile inputs against a running app: memory, time, and the words of every refusal (issue #13).

Starts ``python app.py`` in its own process (the same starter as the load test) and replays,
through ``gradio_client`` and raw HTTP:

1. **memory**: three small files that declare 20000 x 20000 pixels (a 62 KB ZSTD-tiled TIFF,
   a 1.5 MB RGBA PNG, a 300 KB GIF; ``bench/hostile_files.py``), each alone and two at once,
   through ``/estimate``; the server's RSS is sampled every 20 ms and its peak reported;
2. **time**: parameter abuse (``iters`` 20000, ``k`` 10**26, ...): each must be refused, with
   our message, in under a second;
3. **words**: every hostile call must come back as an ``AppError`` carrying our message (at
   most ~300 characters, no traceback, not Gradio's bare "Error"), and the server log may hold
   tracebacks only under an "internal error" id (there should be none).

Run: ``python bench/bench_hostile.py [--keep DIR]``. Prints a table per phase and exits 1 when
a bound is not met (peak RSS <= 2.5 GiB, refusals <= 1 s, no foreign message, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import hostile_files  # noqa: E402
from bench.bench_load import client_for, memory_mb, start_server, stop_server  # noqa: E402

PEAK_LIMIT_MB = 2.5 * 1024
REFUSAL_LIMIT_S = 1.0
EXAMPLE = ROOT / "examples" / "mixed.png"


@dataclass
class Answer:
    case: str
    ok: bool  # True: the server answered normally (no error)
    message: str
    seconds: float


class RssSampler:
    """Samples a process's VmRSS every ``period`` seconds in a thread; ``peak`` in MiB."""

    def __init__(self, pid: int, period: float = 0.02):
        self.pid, self.period, self.peak = pid, period, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, memory_mb(self.pid)[0])
            except (OSError, KeyError):
                return
            time.sleep(self.period)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _estimate(client: Any, image: Path | str, method: str = "lvtp", layers: str = "", params: str = "{}",
              seed: Any = 0, backbone: str = "demo") -> Any:
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)), backbone, method, layers, params, seed, api_name="/estimate")


def _ask(case: str, fn: Callable[[], Any]) -> Answer:
    t0 = time.perf_counter()
    try:
        fn()
        return Answer(case, True, "", time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - every answer is recorded, judged below
        return Answer(case, False, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)


def memory_phase(url: str, pid: int, folder: Path) -> list[tuple[str, float, list[Answer]]]:
    files = {name: make(folder / filename) for name, (make, filename) in hostile_files.MAKERS.items()}
    rows = []
    cases = [[name] for name in files] + [[name, name] for name in files] + [list(files)]
    for names in cases:
        clients = [client_for(url) for _ in names]
        answers: list[Answer] = [None] * len(names)  # type: ignore[list-item]

        def run(i: int, name: str) -> None:
            answers[i] = _ask(name, lambda: _estimate(clients[i], files[name]))

        with RssSampler(pid) as sampler:
            threads = [threading.Thread(target=run, args=(i, n)) for i, n in enumerate(names)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        rows.append((" + ".join(names), sampler.peak, answers))
    return rows


def abuse_cases() -> list[tuple[str, dict[str, Any]]]:
    """(name, /estimate arguments) that must each be refused with our message, quickly."""
    deep = "[" * 5000 + "]" * 5000
    return [
        ("iters 20000", {"params": json.dumps({"iters": 20000})}),
        ("k 10**26", {"params": json.dumps({"k": 10**26})}),
        ("k2 65", {"params": json.dumps({"k2": 65})}),
        ("dtop k 10**26", {"method": "dtop", "params": json.dumps({"k": 10**26})}),
        ("q1 1e308", {"params": '{"q1": 1e308}'}),
        ("seed 2**63", {"seed": 2**63}),
        ("seed 9.2e15", {"seed": 9.2e15}),
        ("seed -1", {"seed": -1}),
        ("seed 'abc'", {"seed": "abc"}),
        ("params nested 5000 deep", {"params": '{"rate": ' + deep + "}"}),
        ("params 1 MB", {"params": json.dumps({"rate": "x" * 1_000_000})}),
        ("params not JSON", {"params": "{rate: 0.5"}),
        ("unknown parameter", {"params": json.dumps({"bogus" * 50000: 1})}),
        ("layers 1 MB", {"layers": "3," * 500_000}),
        ("layers huge int", {"layers": "9" * 5000}),
        ("method unknown, long", {"method": "m" * 100_000}),
        ("backbone unknown, long", {"backbone": "b" * 100_000}),
        ("timm giant", {"backbone": "timm:vit_huge_patch14_224"}),
        ("timm hf-hub", {"backbone": "timm:hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"}),
        ("timm local-dir", {"backbone": "timm:local-dir:/etc"}),
        ("timm not a ViT", {"backbone": "timm:resnet18"}),
        ("dtop on SAM", {"backbone": "sam_vit_b", "method": "dtop"}),
    ]


def abuse_phase(url: str) -> list[Answer]:
    client = client_for(url)
    answers = []
    for name, kwargs in abuse_cases():
        answers.append(_ask(name, lambda kw=kwargs: _estimate(client, EXAMPLE, **kw)))
    # /compare with 20 copies of one method: deduplicated or refused, never run 20 times.
    answers.append(_ask("compare 20 x random", lambda: client.predict(
        _file(EXAMPLE), "demo", ",".join(["random"] * 20), "", 0, 0, api_name="/compare")))
    answers.append(_ask("compare 12 methods", lambda: client.predict(
        _file(EXAMPLE), "demo", ",".join(["random", "evit", "lvtp", "none", "dtop", "matp"] * 2 + ["x"]), "", 0, 0,
        api_name="/compare")))
    return answers


def _file(path: Path) -> Any:
    from gradio_client import handle_file

    return handle_file(str(path))


def judge(answer: Answer, expect_refusal: bool) -> str:
    """'' when the answer is what a user should get, else what is wrong."""
    if expect_refusal and answer.ok:
        return "answered instead of refused"
    if answer.ok:
        return ""
    text = answer.message
    if "QueueError" in text:
        return "queue full"
    if not text.startswith("AppError: "):
        return "not our message (no AppError)"
    body = text[len("AppError: "):]
    if body.strip() in ("", "Error", "None"):
        return "Gradio's bare error"
    if "Traceback" in body or len(body) > 400:
        return f"message of {len(body)} characters"
    if body.startswith("internal error"):
        return "internal error"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="keep the hostile files and server log here")
    args = parser.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="prune_viz_hostile_"))
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "server.log"
    proc, url = start_server(queue_size=32, workers=2, log=log)
    failures = []
    try:
        base = memory_mb(proc.pid)[0]
        print(f"server {url} pid {proc.pid}, RSS at rest {base:.0f} MiB\n")
        print("| files (at once) | peak server RSS (MiB) | answers |\n|---|---|---|")
        for names, peak, answers in memory_phase(url, proc.pid, folder):
            said = "; ".join(f"{a.case}: {'ok' if a.ok else a.message[:110]} ({a.seconds:.1f} s)" for a in answers)
            print(f"| {names} | {peak:.0f} | {said} |")
            if peak > PEAK_LIMIT_MB:
                failures.append(f"peak RSS {peak:.0f} MiB > {PEAK_LIMIT_MB:.0f} with {names}")
            failures += [f"{a.case}: {w}" for a in answers if (w := judge(a, expect_refusal=False))]
        print("\n| abuse | seconds | answer |\n|---|---|---|")
        for a in abuse_phase(url):
            refused = not a.case.startswith("compare 20")
            print(f"| {a.case} | {a.seconds:.2f} | {'answered' if a.ok else a.message[:160]} |")
            if (w := judge(a, expect_refusal=refused)):
                failures.append(f"{a.case}: {w}")
            if refused and a.seconds > REFUSAL_LIMIT_S:
                failures.append(f"{a.case}: refused after {a.seconds:.2f} s > {REFUSAL_LIMIT_S} s")
        print(f"\nserver RSS after: {memory_mb(proc.pid)[0]:.0f} MiB (peak {memory_mb(proc.pid)[1]:.0f} MiB)")
    finally:
        stop_server(proc)
    text = log.read_text(errors="replace")
    tracebacks = text.count("Traceback (most recent call last)")
    internal = text.count("internal error ")
    print(f"server log: {tracebacks} tracebacks, {internal} internal-error ids ({log})")
    if tracebacks > internal:
        failures.append(f"{tracebacks - internal} tracebacks in the server log outside internal errors")
    print("\n" + ("all bounds met" if not failures else "NOT MET:\n- " + "\n- ".join(failures)))
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
