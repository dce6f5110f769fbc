"""Shared helpers for the comparison benchmarks (timing, threads, printing)."""
from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from typing import NamedTuple


def torch_or_none():
    """The ``torch`` module if installed, else ``None`` (torch is never required)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def threads(n: int):
    """Give nn_core (its thread budget: every loaded BLAS, see :mod:`nn_core._parallel`)
    and torch ``n`` threads inside the block."""
    from .. import _parallel

    torch = torch_or_none()
    old_torch = torch.get_num_threads() if torch else None
    if not _parallel.controllable():
        print("warning: BLAS thread counts cannot be controlled in this process")
    with _parallel.limit_threads(n):
        if torch:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch:
                torch.set_num_threads(old_torch)


def thread_report() -> str:
    """One line describing the BLAS / torch thread settings in effect (for the log)."""
    from .. import _parallel

    parts = [f"{os.path.basename(getattr(lc, 'filepath', '?'))}={lc.get_num_threads()}"
             for lc in _parallel._BLAS.libs()] or ["BLAS threads unknown"]
    parts.append(f"nn_core budget={_parallel.blas_threads()}")
    torch = torch_or_none()
    if torch:
        parts.append(f"torch={torch.get_num_threads()}")
    return ", ".join(parts)


def cpu_report() -> str:
    """The CPU (vendor, family, model, name from ``/proc/cpuinfo`` where there is one)
    and the SIMD level the kernels use."""
    from .._kernels import _simd

    info = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if not key and info:        # end of the first processor's block
                    break
                info.setdefault(key, value.strip())
    except OSError:
        pass
    if "cpu family" in info:
        cpu = (f"{info.get('model name', '?')} ({info.get('vendor_id', '?')} family "
               f"{info['cpu family']} model {info.get('model', '?')})")
    else:
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, SIMD {_simd.LEVELS[_simd.simd_level()]}"


def machine_report() -> str:
    return f"{cpu_report()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _calibrate(fn, min_time: float, clock=time.perf_counter) -> int:
    """Calls per sample so that one sample lasts >= ``min_time`` seconds."""
    number = 1
    while True:
        t0 = clock()
        for _ in range(number):
            fn()
        dt = clock() - t0
        if dt >= min_time or number >= 1 << 16:
            return number
        number *= 2 if dt <= 0 else max(2, min(16, int(1.2 * min_time / dt) + 1))


def _sample(fn, number: int, clock=time.perf_counter) -> float:
    t0 = clock()
    for _ in range(number):
        fn()
    return (clock() - t0) / number


def measure(fn, repeat: int = 7, min_time: float = 0.05) -> float:
    """Median seconds per call of ``fn`` (calls are batched to last >= ``min_time``)."""
    fn()  # warm-up
    number = _calibrate(fn, min_time)
    return statistics.median(_sample(fn, number) for _ in range(repeat))


def warm_up(fns: dict, seconds: float = 0.05) -> None:
    """Call every function of ``fns`` in turn until each has run for ``seconds`` (at
    least twice): caches, allocator pools, thread pools and lazily compiled paths are
    then warm before anything is timed."""
    spent = dict.fromkeys(fns, 0.0)
    calls = dict.fromkeys(fns, 0)
    while any(spent[k] < seconds or calls[k] < 2 for k in fns):
        for k, fn in fns.items():
            if spent[k] < seconds or calls[k] < 2:
                t0 = time.perf_counter()
                fn()
                spent[k] += time.perf_counter() - t0
                calls[k] += 1


class Times(NamedTuple):
    """Seconds per call on both clocks, from the same samples."""
    wall: float
    cpu: float


def _sample_both(fn, number: int) -> Times:
    wall, cpu = CLOCKS["wall"], CLOCKS["cpu"]
    w0, c0 = wall(), cpu()
    for _ in range(number):
        fn()
    c1, w1 = cpu(), wall()
    return Times((w1 - w0) / number, (c1 - c0) / number)


def interleaved(fns: dict, repeat: int = 7, min_time: float = 0.05, clock="wall",
                settle: float = 0.0) -> dict:
    """Median seconds per call of each function, measured alternately in one run so
    that machine noise hits every contender alike (one warm-up and one calibration
    per function, then ``repeat`` rounds of one sample each).

    ``clock="cpu"`` measures process CPU time instead of wall time: on a shared,
    overloaded machine it is insensitive to time slicing -- meaningful for one
    thread only (with several it sums the threads' time).

    ``clock="both"`` reads wall time and process CPU time (every thread's, spinning
    pool workers included) around each sample, calibrates on wall time, and returns
    :class:`Times` per function: the median wall time and the median CPU time of the
    same samples.  ``cpu / wall`` is then the number of cores the call kept busy.  The
    CPU time of threads other than the caller's is accounted at context switches and
    scheduler ticks (1-4 ms), so with several threads use samples of 0.1 s or more.

    ``settle`` (seconds; use it with several threads): before each sample, sleep
    that long and make one untimed call.  Thread pools keep spinning after a call --
    OpenBLAS's workers for up to ~2^28 cycles (~0.1 s), OpenMP's for a while too --
    and with contenders alternating call by call, one library's spinning workers
    take a core from the other's threads (measured here: torch's 2-thread LSTM ran
    slower than its 1-thread one right after nn_core's calls).  With ``settle`` each
    sample sees only its own library's threads."""
    both = clock == "both"
    clock = CLOCKS["wall"] if both else CLOCKS[clock] if isinstance(clock, str) else clock
    numbers = {}
    for k, fn in fns.items():
        fn()
        numbers[k] = _calibrate(fn, min_time, clock)
    samples = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            if settle > 0:
                time.sleep(settle)
                fn()
            samples[k].append(_sample_both(fn, numbers[k]) if both
                              else _sample(fn, numbers[k], clock))
    if both:
        return {k: Times(statistics.median(s.wall for s in v),
                         statistics.median(s.cpu for s in v)) for k, v in samples.items()}
    return {k: statistics.median(v) for k, v in samples.items()}


def load1() -> float:
    """The 1-minute load average (NaN where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def fmt_load(start: float, end: float) -> str:
    """``start-end`` of the 1-minute load average over a measurement."""
    return f"{start:.2f}-{end:.2f}"


def times_legend(cw: bool = True) -> str:
    """What the columns of :func:`times_header` and the ``load`` column mean."""
    return ("ms = wall time per call; cpu = process CPU time per call (every thread, "
            "spinning pool workers included);\n"
            + ("c/w = cpu / wall (cores kept busy); " if cw else "")
            + "load = 1-minute load average at the start-end of the measurement")


def fmt_times(*times: Times, cw: bool = True) -> str:
    """``wall cpu [c/w]`` for each :class:`Times`, in ms (columns of :func:`times_header`)."""
    return " ".join(f"{t.wall * 1e3:9.3f} {t.cpu * 1e3:9.3f}"
                    + (f" {t.cpu / t.wall if t.wall > 0 else math.nan:4.2f}" if cw else "")
                    for t in times)


def times_header(*names: str, cw: bool = True) -> str:
    return " ".join(f"{n + ' ms':>9} {'cpu':>9}" + (f" {'c/w':>4}" if cw else "")
                    for n in names)


def scaling_table(results: dict, thread_counts, width: int = 26, what: str = "model") -> list:
    """Lines of a table of own-time ratios between thread counts: for each row label of
    ``results`` (``{label: {threads: (nn_core Times, torch Times)}}``) and each thread
    count after the first, wall and CPU time at that count over those at the first.
    Empty with a single thread count."""
    base, *others = thread_counts
    lines = []
    for n in others:
        lines.append(f"# own time at {n} threads / at {base} (wall below 1: faster; "
                     f"cpu above 1: more core time per call)")
        lines.append(f"{what:<{width}} {f'nn {n}t/{base}t':>10} {'cpu':>6} "
                     f"{f'torch {n}t/{base}t':>13} {'cpu':>6}")
        for label, by_n in results.items():
            if base not in by_n or n not in by_n:
                continue
            ratios = [getattr(by_n[n][i], c) / getattr(by_n[base][i], c)
                      for i in (0, 1) for c in ("wall", "cpu")]
            lines.append(f"{label:<{width}} {ratios[0]:10.2f} {ratios[1]:6.2f} "
                         f"{ratios[2]:13.2f} {ratios[3]:6.2f}")
    return lines


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f}"
