"""Shared helpers for the comparison benchmarks (timing, threads, printing)."""
from __future__ import annotations

import contextlib
import statistics
import time


def torch_or_none():
    """The ``torch`` module if installed, else ``None`` (torch is never required)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def threads(n: int):
    """Limit BLAS (numpy/scipy OpenBLAS, via threadpoolctl when present) and torch to
    ``n`` threads inside the block."""
    torch = torch_or_none()
    old_torch = torch.get_num_threads() if torch else None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    ctx = threadpool_limits(limits=n) if threadpool_limits else contextlib.nullcontext()
    with ctx:
        if torch:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch:
                torch.set_num_threads(old_torch)


def measure(fn, repeat: int = 7, min_time: float = 0.05) -> float:
    """Median seconds per call of ``fn`` (calls are batched to last >= ``min_time``)."""
    fn()  # warm-up
    number = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time or number >= 1 << 16:
            break
        number *= 2
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def interleaved(fns: dict, repeat: int = 7, min_time: float = 0.05) -> dict:
    """Median seconds per call of each function, measured alternately in one run so
    that machine noise hits every contender alike."""
    samples = {k: [] for k in fns}
    for k, fn in fns.items():
        fn()
    for _ in range(repeat):
        for k, fn in fns.items():
            samples[k].append(measure(fn, repeat=1, min_time=min_time))
    return {k: statistics.median(v) for k, v in samples.items()}


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f}"
