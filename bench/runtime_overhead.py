"""What the shared runtime costs: the same GetWallet served bare and through the full mesh stack.

    make bench        (= .venv/bin/python -m bench.runtime_overhead)
    .venv/bin/python -m bench.runtime_overhead --duration 5 --warmup 1 --concurrency 1,16
    .venv/bin/python -m bench.runtime_overhead --profile      # cProfile the full server at c=16

Four stacks (bench/stacks.py), each served by its own server process and driven by its own
client process (so that neither side's CPU is shared with the other, nor with this orchestrator):
  bare             plaintext grpc.aio server, no interceptors / insecure channel, bare stub;
  full             services.runtime.server.MeshServer as "wallet" (mTLS, JWT, policy, deadlines,
                   errors, metrics, OpenTelemetry with an SDK TracerProvider, spans exported as
                   the default configuration says: nowhere) called through
                   services.runtime.client.Upstream as "transaction";
  full-exported    the same with every span built and written to a file;
  full-no-tracing  the same with tracing off on both sides: the difference is OpenTelemetry;
  bare-tls         (only with --stacks) plain server and channel with mTLS: what TLS alone costs.
All servers and clients start once; the measurements then run in interleaved rounds (stack
order rotated every round) and the table shows the median over rounds.
The client runs a closed loop at each concurrency (warm-up, then a measured window) and
records every call's latency. The table gives QPS, p50 and p99 per (stack, concurrency) and
full/bare QPS ratios; the results go to bench/results/runtime_overhead.json. Any failed call
makes the run exit with status 1 (2 for a setup failure); with --check-target a ratio below
the target at the highest concurrency also exits 1.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import pstats
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from services.runtime.config import load_topology

from .client import non_negative, parse_concurrency, positive
from .stacks import OPTIONAL_STACKS, STACKS
from .stats import cpu_model, git, median

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "runtime_overhead.json"
PROFILE_TEXT = ROOT / "bench" / "results" / "runtime_overhead_profile.txt"
TARGET_RATIO = 0.75
TARGET_CONCURRENCY = 16
TARGET_TEXT = f"target: full/bare >= {TARGET_RATIO} at concurrency {TARGET_CONCURRENCY}"
START_TIMEOUT = 30.0
_LOADAVG_BEFORE = None


class BenchError(Exception):
    """The benchmark could not run (a process did not start or died); the message says which."""


class _Processes:
    """Every child process of this run; all are stopped on exit, whatever happens."""

    def __init__(self):
        self._procs: list[subprocess.Popen] = []

    def start(self, args: list[str], **kwargs) -> subprocess.Popen:
        # A new session: a Ctrl-C in the terminal reaches only this process, which then stops
        # the children in order (the servers also stop by themselves when their stdin closes).
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            if proc.stdin and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        for stream in (proc.stdin, proc.stdout):
            if stream and not stream.closed:
                stream.close()
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self._procs)):
            self.stop(proc, timeout=5.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()
        return False


def _read_line(proc: subprocess.Popen, what: str, timeout: float) -> bytes:
    """The next stdout line of a child, or BenchError when it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line:
                return line
        if proc.poll() is not None:
            raise BenchError(f"the {what} exited with status {proc.returncode} (its error is above)")
    raise BenchError(f"the {what} did not answer within {timeout:.0f}s")


def _server_port(server: subprocess.Popen, stack: str) -> int:
    line = _read_line(server, f"{stack} server", START_TIMEOUT)
    if not line.startswith(b"PORT "):
        raise BenchError(f"the {stack} server said {line!r} instead of its port")
    return int(line.split()[1])


class _Stack:
    """One stack under test: its server process and its client process (in --serve mode)."""

    def __init__(self, name: str, server: subprocess.Popen, port: int, client: subprocess.Popen):
        self.name, self.server, self.port, self.client = name, server, port, client

    def measure(self, concurrency: int, warmup: float, duration: float) -> dict:
        if self.server.poll() is not None:
            raise BenchError(f"the {self.name} server died (status {self.server.returncode})")
        self.client.stdin.write(json.dumps({"concurrency": concurrency, "warmup": warmup,
                                            "duration": duration}).encode() + b"\n")
        self.client.stdin.flush()
        return json.loads(_read_line(self.client, f"{self.name} client", warmup + duration + 30))


def _start_stacks(procs: _Processes, names: list[str], profile_path: str | None = None) -> list[_Stack]:
    """All servers first (they start in parallel), then one client per server."""
    servers = {}
    for name in names:
        print(f"[{name}] starting the server process ...", flush=True)
        servers[name] = procs.start(
            ["-m", "bench.server", name] + (["--profile", profile_path] if profile_path else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    stacks = []
    for name, server in servers.items():
        port = _server_port(server, name)
        client = procs.start(["-m", "bench.client", name, str(port), "--server-pid", str(server.pid), "--serve"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        print(f"[{name}] server pid {server.pid} on 127.0.0.1:{port}, client pid {client.pid}", flush=True)
        stacks.append(_Stack(name, server, port, client))
    for stack in stacks:
        if json.loads(_read_line(stack.client, f"{stack.name} client", START_TIMEOUT)) != {"ready": True}:
            raise BenchError(f"the {stack.name} client did not start")
    return stacks


def _run_rounds(stacks: list[_Stack], args) -> list[dict]:
    """Every (round, concurrency, stack), the stack order rotated each round, so that a slow
    moment of the machine does not land on one stack only."""
    measurements = []
    for rnd in range(args.rounds):
        for concurrency in args.concurrency:
            order = stacks[rnd % len(stacks):] + stacks[:rnd % len(stacks)]
            print(f"round {rnd + 1}/{args.rounds}, concurrency {concurrency}: {', '.join(s.name for s in order)}",
                  flush=True)
            for stack in order:
                result = stack.measure(concurrency, args.warmup, args.duration)
                result["round"] = rnd + 1
                measurements.append(result)
    return measurements




def _aggregate(measurements: list[dict], stacks: list[str], concurrency: list[int]) -> list[dict]:
    runs = []
    for name in stacks:
        for c in concurrency:
            ms = [m for m in measurements if m["stack"] == name and m["concurrency"] == c]
            codes: dict[str, int] = {}
            for m in ms:
                for code, n in m["error_codes"].items():
                    codes[code] = codes.get(code, 0) + n
            runs.append({
                "stack": name, "concurrency": c, "rounds": len(ms),
                "calls": sum(m["calls"] for m in ms),
                "qps": round(median([m["qps"] for m in ms]), 1),
                "qps_min": min(m["qps"] for m in ms), "qps_max": max(m["qps"] for m in ms),
                "p50_ms": round(median([m["p50_ms"] for m in ms]), 4),
                "p99_ms": round(median([m["p99_ms"] for m in ms]), 4),
                "client_cpu_us_per_call": median([m["client_cpu_us_per_call"] for m in ms]),
                "server_cpu_us_per_call": median([m["server_cpu_us_per_call"] for m in ms]),
                "errors": sum(m["errors"] for m in ms), "error_codes": codes,
            })
    return runs


def _conditions(args) -> dict:
    import opentelemetry.sdk.version as otel_version
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "opentelemetry_sdk": otel_version.__version__,
        "trace_sample_ratio": load_topology().observability.trace_sample_ratio,
        "trace_export_of_full": load_topology().observability.trace_export,
        "duration_seconds": args.duration,
        "warmup_seconds": args.warmup,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "loadavg_before": _LOADAVG_BEFORE,
        "processes": "one server process and one client process per stack, on the same host (loopback)",
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "services_modified": bool(git("status", "--porcelain", "--", "services")),
    }






def _ratios(measurements: list[dict]) -> dict:
    """QPS of each stack over bare's, per concurrency: the median over rounds of the ratio within
    a round (the two were measured seconds apart, under the same machine conditions)."""
    by = {(m["round"], m["stack"], m["concurrency"]): m["qps"] for m in measurements}
    ratios: dict[str, dict[str, float]] = {}
    for stack in sorted({m["stack"] for m in measurements} - {"bare"}):
        for c in sorted({m["concurrency"] for m in measurements}):
            per_round = [by[(r, stack, c)] / by[(r, "bare", c)] for (r, s_, c_) in by
                         if s_ == stack and c_ == c and by.get((r, "bare", c))]
            if per_round:
                ratios.setdefault(f"{stack}/bare", {})[str(c)] = round(median(per_round), 3)
    return ratios


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_report(report: dict) -> None:
    runs, ratios = report["runs"], report["ratios"]
    print()
    print("medians over rounds; QPS range = slowest..fastest round; CPU = CPU time of the process per call")
    header = (f"{'stack':<16} {'conc':>4} {'QPS':>7} {'QPS range':>13} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
              f" {'QPS/bare':>8} {'client CPU':>10} {'server CPU':>10}")
    print(header)
    print("-" * len(header))
    for r in runs:
        ratio = ratios.get(f"{r['stack']}/bare", {}).get(str(r["concurrency"])) if r["stack"] != "bare" else 1.0
        span = f"{r['qps_min']:.0f}..{r['qps_max']:.0f}"
        print(f"{r['stack']:<16} {r['concurrency']:>4} {r['qps']:>7.0f} {span:>13} {r['p50_ms']:>7.3f}"
              f" {r['p99_ms']:>7.3f} {r['errors']:>6} {_fmt(ratio, '>8.2f')}"
              f" {_fmt(r.get('client_cpu_us_per_call'), '>7.0f')} µs {_fmt(r.get('server_cpu_us_per_call'), '>7.0f')} µs")
    print()
    target = report["target"]
    measured = target["measured"]
    verdict = "n/a (concurrency 16 not measured)" if measured is None else \
        ("met" if target["met"] else "NOT met")
    print(f"full/bare QPS at concurrency {TARGET_CONCURRENCY}: {_fmt(measured, '.2f')}    {TARGET_TEXT}  -> {verdict}")
    for stack, meaning in (("full-exported", "every span built and written to a file"),
                           ("full-no-tracing", "the difference to full is OpenTelemetry")):
        ratio = ratios.get(f"{stack}/bare", {}).get(str(TARGET_CONCURRENCY))
        if ratio is not None:
            print(f"{stack}/bare QPS at concurrency {TARGET_CONCURRENCY}: {ratio:.2f}  ({meaning})")
    c = report["conditions"]
    print(f"conditions: {c['cpu_count']} CPUs ({c['cpu_model']}), Python {c['python']}, grpcio {c['grpcio']}, "
          f"opentelemetry-sdk {c['opentelemetry_sdk']} (trace sample ratio {c['trace_sample_ratio']:g}, "
          f"full exports to {c['trace_export_of_full']}); "
          f"{c['rounds']} round(s) of {c['warmup_seconds']:g}s warm-up "
          f"+ {c['duration_seconds']:g}s per point; load average before {c['loadavg_before']}; {c['date']}")
    dirty = " + uncommitted changes in services/" if c["services_modified"] else ""
    print(f"            {c['processes']}; {c['platform']}; commit {c['git_commit']}{dirty}")
    errors = sum(r["errors"] for r in runs)
    if errors:
        detail = ", ".join(f"{r['stack']} c={r['concurrency']}: {r['error_codes']}" for r in runs if r["errors"])
        print(f"ERRORS: {errors} calls failed ({detail}); these numbers are not valid")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _profile(procs: _Processes, args) -> int:
    concurrency = max(args.concurrency)
    with tempfile.TemporaryDirectory(prefix="diboas-bench-prof-") as tmp:
        stats_path = os.path.join(tmp, "server.pstats")
        (stack,) = _start_stacks(procs, ["full"], profile_path=stats_path)
        result = stack.measure(concurrency, args.warmup, args.duration)
        procs.stop(stack.client)
        procs.stop(stack.server)  # the server writes its stats as it stops
        if not os.path.exists(stats_path):
            raise BenchError("the profiled server wrote no stats")
        print(f"\nfull server under cProfile at concurrency {concurrency}: {result['qps']:.0f} calls/s "
              f"(cProfile slows Python code down; the shares matter, not the rate)\n")
        out = Path(args.profile_out) if args.profile_out else PROFILE_TEXT
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            for sort, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
                f.write(f"== full server, concurrency {concurrency}, {args.warmup:g}s warm-up + {args.duration:g}s, "
                        f"{result['calls']} measured calls: top {args.profile_top} by {title} ==\n")
                stats = pstats.Stats(stats_path, stream=f)
                stats.strip_dirs().sort_stats(sort).print_stats(args.profile_top)
        print(out.read_text())
        if args.profile_stats:
            shutil.copy(stats_path, args.profile_stats)
            print(f"pstats written to {args.profile_stats}")
        print(f"profile summary written to {_shown(out)}")
    return 1 if result["errors"] else 0


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runtime_overhead",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=positive, default=5.0, help="measured seconds per point (default 5)")
    parser.add_argument("--warmup", type=non_negative, default=1.0, help="warm-up seconds per point (default 1)")
    parser.add_argument("--concurrency", type=parse_concurrency, default=[1, 16],
                        help="comma-separated closed-loop concurrencies (default 1,16)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; the table shows medians over rounds (default 3)")
    parser.add_argument("--stacks", default=",".join(STACKS),
                        help=f"comma-separated, from {', '.join(STACKS + OPTIONAL_STACKS)} "
                             f"(default {','.join(STACKS)}; bare-tls is plain gRPC with mTLS)")
    parser.add_argument("--output", default=str(RESULTS), help="JSON results file (default %(default)s)")
    parser.add_argument("--check-target", action="store_true",
                        help=f"exit 1 when full/bare < {TARGET_RATIO} at concurrency {TARGET_CONCURRENCY}")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the comparison, run the full stack at the highest concurrency with the "
                             "server under cProfile and print where its time goes")
    parser.add_argument("--profile-top", type=int, default=30, help="rows of the profile to print (default 30)")
    parser.add_argument("--profile-out", help=f"profile text file (default {PROFILE_TEXT.relative_to(ROOT)})")
    parser.add_argument("--profile-stats", help="also copy the raw pstats file here")
    args = parser.parse_args(argv)
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    unknown = [s for s in stacks if s not in STACKS + OPTIONAL_STACKS]
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if unknown or not stacks:
        parser.error(f"--stacks: unknown {unknown}; choose from {', '.join(STACKS + OPTIONAL_STACKS)}")

    global _LOADAVG_BEFORE
    # Ctrl-C and SIGTERM both unwind through the `with _Processes()` below, which stops every
    # child (also when this process was started with SIGINT ignored, as `cmd &` does).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    _LOADAVG_BEFORE = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else None
    try:
        with _Processes() as procs:
            if args.profile:
                return _profile(procs, args)
            if "bare" not in stacks:
                parser.error("--stacks must include bare (the ratios are relative to it)")
            print(f"runtime overhead: stacks {', '.join(stacks)}; concurrency {','.join(map(str, args.concurrency))};"
                  f" {args.rounds} round(s) of {args.warmup:g}s warm-up + {args.duration:g}s per point", flush=True)
            running = _start_stacks(procs, stacks)
            measurements = _run_rounds(running, args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbench: interrupted; all benchmark processes stopped", file=sys.stderr)
        return 130

    runs = _aggregate(measurements, stacks, args.concurrency)
    ratios = _ratios(measurements)
    measured = ratios.get("full/bare", {}).get(str(TARGET_CONCURRENCY))
    report = {
        "benchmark": "runtime_overhead",
        "conditions": _conditions(args),
        "runs": runs,
        "measurements": measurements,
        "ratios": ratios,
        "target": {"text": TARGET_TEXT, "ratio": TARGET_RATIO, "concurrency": TARGET_CONCURRENCY,
                   "measured": measured, "met": None if measured is None else measured >= TARGET_RATIO},
        "errors": sum(r["errors"] for r in runs),
    }
    _print_report(report)
    out = Path(args.output)
    _write_json(out, report)
    print(f"results written to {_shown(out)}")
    if report["errors"]:
        return 1
    if args.check_target and measured is not None and measured < TARGET_RATIO:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
