"""Run a stretch of small tensor operations on one intra-op thread, for the calling thread only.

Why: a pruning decision is hundreds of small operations (k-means iterations, entropies over
Nk x C). With 2 intra-op threads each of them opens an OpenMP parallel region and waits in its
barrier; on the 2-core demo machine LVTP's decision took 25 ms on 2 threads and 8 ms on 1.

Why not ``torch.set_num_threads(1)``: it is per calling thread for the work itself, but it also
overwrites the process-wide value that every thread *not yet initialised* copies on its first
parallel operation (measured: a thread started while another thread had set 1 ran on 1 thread
for good, ``tests/test_threads.py``). In the app, a Gradio worker thread created during someone
else's decision would then run every later forward on one thread. Instead this module sets the
calling thread's own OpenMP setting (``omp_set_num_threads``, a per-thread ICV) and MKL's
thread-local setting (``mkl_set_num_threads_local``) through the runtimes torch itself loaded,
and restores both on exit. It checks that torch sees the change (``torch.get_num_threads()``);
where it cannot find or verify them (another platform or build) it changes nothing.

A decision inside the section still has the caller's other core: :func:`side_task` runs one
independent piece of it (LVTP's Sobel map of the image) on a second Python thread, itself on one
intra-op thread, while this thread goes on. One join instead of a barrier per operation.
"""

from __future__ import annotations

import _thread
import contextvars
import ctypes
import functools
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch

__all__ = ["can_pin_threads", "one_thread", "single_threaded", "side_task", "SMALL_WORK"]

# Below this many elements in the decision's main input (demo: 1024 x 192 = 0.2 M) the work of
# each operation is too small to be worth a parallel region; SAM's 4096 x 768 (3.1 M) keeps
# every thread.
SMALL_WORK = 1 << 20

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# Intra-op threads the calling thread had before the innermost one_thread section that took
# effect (1 outside any): how many cores the caller lent to the work inside.
_LENT: contextvars.ContextVar[int] = contextvars.ContextVar("prune_viz_lent_threads", default=1)


def can_pin_threads() -> bool:
    """Whether :func:`one_thread` can set this thread alone to one intra-op thread here (the
    OpenMP runtime torch loaded was found); where not, work meant for one-thread workers stays
    on the calling thread."""
    return _runtimes() is not None


@functools.lru_cache(maxsize=1)
def _runtimes() -> tuple[Any, Callable[[int], int] | None] | None:
    """(OpenMP library, MKL thread-local setter or None) as loaded by torch; None where the
    OpenMP runtime cannot be identified (not Linux, none loaded, or several)."""
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split()[-1] for line in maps if "omp" in line.rsplit("/", 1)[-1]}
    except OSError:
        return None
    omp = [p for p in loaded if os.path.basename(p).startswith(("libgomp", "libiomp", "libomp"))]
    mine = [p for p in omp if p.startswith(libdir)] or omp
    if len(mine) != 1:
        return None
    try:
        lib = ctypes.CDLL(mine[0])
        lib.omp_set_num_threads.argtypes = [ctypes.c_int]
        lib.omp_get_max_threads.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib, _mkl_setter(os.path.join(libdir, "libtorch_cpu.so"))


def _mkl_setter(path: str) -> Callable[[int], int] | None:
    """MKL's per-thread thread count, set through its Fortran entry point (by reference: the
    one calling convention MKL fixes for the trailing-underscore names), checked by reading
    it back. MKL's vector maths (exp, log on float tensors) runs its own threads: without
    this, those operations still use 2 threads."""
    try:
        lib = ctypes.CDLL(path)
        setter, getter = lib.mkl_set_num_threads_local_, lib.mkl_get_max_threads
    except (OSError, AttributeError):
        return None
    setter.argtypes, setter.restype, getter.restype = [ctypes.POINTER(ctypes.c_int)], ctypes.c_int, ctypes.c_int

    def set_local(n: int) -> int:
        return int(setter(ctypes.byref(ctypes.c_int(n))))

    before = set_local(1)
    ok = getter() == 1
    set_local(before)
    return set_local if ok else None


@contextmanager
def one_thread(when: bool = True) -> Iterator[bool]:
    """Within the block, torch operations of *this* thread use one intra-op thread; other
    threads, and threads started meanwhile, keep theirs. Yields whether it took effect (False
    when ``when`` is False, already on one thread, or the runtime could not be reached)."""
    if not when:
        yield False
        return
    before = torch.get_num_threads()  # also initialises this thread's setting, so ours sticks
    runtimes = _runtimes() if before > 1 else None
    if runtimes is None:
        yield False
        return
    omp, mkl = runtimes
    omp.omp_set_num_threads(1)
    mkl_before = mkl(1) if mkl is not None else None
    took = torch.get_num_threads() == 1
    lent = _LENT.set(before if took else 1)
    try:
        yield took
    finally:
        _LENT.reset(lent)
        omp.omp_set_num_threads(before)
        if mkl is not None and mkl_before is not None:
            mkl(mkl_before)


def single_threaded(fn: F) -> F:
    """Decorate a ``decide(ctx, params)``: it runs on one intra-op thread when its tokens are
    small (:data:`SMALL_WORK`). The decision is the same either way."""

    @functools.wraps(fn)
    def wrapper(ctx: Any, params: Any) -> Any:
        tokens = getattr(ctx, "tokens", None)
        with one_thread(tokens is not None and tokens.numel() <= SMALL_WORK):
            return fn(ctx, params)

    return wrapper  # type: ignore[return-value]


def side_task(fn: Callable[..., T], *args: Any) -> Callable[[], T]:
    """Start ``fn(*args)``; returns a function that waits for it and gives its value (or raises
    its exception).

    Inside a :func:`one_thread` section whose caller had more than one intra-op thread, ``fn``
    runs on a second Python thread (its torch operations on one intra-op thread, the request's
    context variables copied), so the caller's second core works on it while this thread goes
    on. Otherwise (one thread lent, or outside a section: big inputs keep every thread for their
    own operations) it runs here, now. ``fn`` must not depend on what the caller does meanwhile;
    its result is the same either way.

    The thread is started without waiting for it to run (``threading.Thread.start`` waits, which
    took ~11 ms median at load 12 on the 2-core machine), and if it has not begun ``fn`` when the
    value is asked for, the caller runs ``fn`` itself and the thread, when it runs, finds nothing
    to do. What is left to lose on a busy machine: a thread that began ``fn`` and then waits for a
    core makes the caller wait too.
    """
    if _LENT.get() <= 1:
        value = fn(*args)
        return lambda: value
    context = contextvars.copy_context()
    claim, done = threading.Lock(), threading.Event()
    box: dict[str, Any] = {}

    def work() -> None:
        if not claim.acquire(blocking=False):
            return  # the caller took it
        try:
            with one_thread():
                box["value"] = context.run(fn, *args)
        except BaseException as error:  # handed to the caller by result()
            box["error"] = error
        finally:
            done.set()

    try:
        _thread.start_new_thread(work, ())
    except RuntimeError:  # no thread to be had (a process at its limit): result() runs it here
        pass

    def result() -> T:
        if claim.acquire(blocking=False):
            return fn(*args)  # not begun yet: here and now is sooner
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result
