"""What every benchmark here shares: a closed loop of calls with a measured window, the CPU
time of the processes under test (Linux /proc), and the compliance rules a benchmark's mesh
screens with."""
from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from typing import Awaitable, Callable

import grpc

from .stats import summarize

CLK_TCK = os.sysconf("SC_CLK_TCK")
COMPLIANCE_RULES = Path(__file__).parent / "compliance.yaml"    # every check, limits the load stays under


def compliance_rules() -> dict[str, str]:
    """The environment that makes a benchmark's mesh screen with bench/compliance.yaml (unless
    DIBOAS_COMPLIANCE_FILE is set already): the shipped velocity and daily rules would hold or
    refuse a benchmark's thousands of SENDs a minute."""
    return {"DIBOAS_COMPLIANCE_FILE": os.environ.get("DIBOAS_COMPLIANCE_FILE") or str(COMPLIANCE_RULES)}


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a whole process (every thread); NaN when it is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / CLK_TCK   # utime, stime (fields 14, 15)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)   # idle + iowait
    total = sum(values[:8])                                      # guest time is already in user
    return total - idle, total


def wait_until_quiet(busy_below: float = 0.25, longest: float = 60.0, say: Callable[[str], None] = print) -> float:
    """Wait until the machine's CPUs were busy less than `busy_below` of one second (what a
    benchmark run just before left behind has settled), at most `longest` seconds; the last
    second's busy fraction."""
    start = time.monotonic()
    before = machine_ticks()
    while True:
        time.sleep(1.0)
        after = machine_ticks()
        busy = (after[0] - before[0]) / max(1, after[1] - before[1])
        before = after
        waited = time.monotonic() - start
        if busy < busy_below or waited >= longest:
            if waited > 1.5:
                say(f"  the machine was busy; waited {waited:.0f} s (CPUs {busy:.0%} busy now)")
            return busy
        if waited < 1.5:
            say(f"  CPUs {busy:.0%} busy: waiting until below {busy_below:.0%} (at most {longest:.0f} s) ...")


async def closed_loop(call: Callable[[int, int], Awaitable[str | None]], concurrency: int, warmup: float,
                      duration: float, pids: dict[str, list[int]]) -> dict:
    """`await call(worker, n)` returns None on success or an error label. Workers loop for warmup +
    duration seconds; calls that start and finish inside the window are recorded. The CPU time of
    each named group of processes in `pids` is reported per recorded call."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    window: dict = {}
    done = asyncio.Event()

    def tree_cpu() -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) for pid in tree) for name, tree in pids.items()}

    async def worker(k: int) -> None:
        perf, n = time.perf_counter, 0
        while not done.is_set():
            n += 1
            started = perf()
            try:
                error = await call(k, n)
            except Exception as exc:   # every failure is counted and reported
                error = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
            finished = perf()
            if error is not None:                 # counted in warm-up too: any failure invalidates the run
                errors[error] = errors.get(error, 0) + 1
                await asyncio.sleep(0.001)        # do not spin on a dead server
                continue
            if "start" in window and started >= window["start"] and not done.is_set():
                latencies.append(finished - started)

    def open_window() -> None:
        window["cpu"] = tree_cpu()
        window["client_cpu"] = time.process_time()
        window["machine"] = machine_ticks()
        window["wall_start"] = time.time()
        window["start"] = time.perf_counter()

    def close_window() -> None:
        window["end"] = time.perf_counter()
        window["wall_end"] = time.time()
        window["client_cpu"] = time.process_time() - window["client_cpu"]
        window["cpu"] = {name: seconds - window["cpu"][name] for name, seconds in tree_cpu().items()}
        busy, total = machine_ticks()
        window["machine"] = (busy - window["machine"][0]) / max(1, total - window["machine"][1])
        done.set()

    loop.call_later(warmup, open_window)
    loop.call_later(warmup + duration, close_window)
    tasks = [asyncio.ensure_future(worker(k)) for k in range(concurrency)]
    try:
        # In-flight calls finish by themselves; a hung one is cut off after a grace period.
        _, pending = await asyncio.wait(tasks, timeout=warmup + duration + 15)
        for task in pending:
            task.cancel()
            errors["HUNG"] = errors.get("HUNG", 0) + 1
    finally:
        for task in tasks:
            task.cancel()
    result = summarize(latencies, window["end"] - window["start"])
    calls = max(1, result["calls"])
    result.update(
        concurrency=concurrency, errors=sum(errors.values()), error_codes=errors,
        client_cpu_us_per_call=round(window["client_cpu"] / calls * 1e6, 1),
        **{f"{name}_cpu_us_per_call": None if math.isnan(seconds) else round(seconds / calls * 1e6, 1)
           for name, seconds in window["cpu"].items()},
        machine_cpu_busy=round(window["machine"], 3),
        window=(window["wall_start"], window["wall_end"]))
    return result
