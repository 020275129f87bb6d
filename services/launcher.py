"""`make run`: start the processes of the topology's shape (by default each service in its own;
`make run MODE=monolith` all four in one), wait until every service reports SERVING, then the
Envoy gateway in front of them (until it and its upstreams are healthy), print where everything
is, and stop it all cleanly on Ctrl-C or SIGTERM (the gateway first).

Once everything is up, the launcher supervises: a process or the gateway that exits is started
again after a growing delay while the rest keeps serving, and given up after a crash loop
(`defaults.restart` in mesh.yaml; the policy is services/supervision.py). SIGUSR1 tries the
given-up ones again.

Each process logs JSON to <state_dir>/logs/<process>.log, the gateway to gateway.log (and its
access log to gateway-access.jsonl); this command prints progress.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from services.config_files import ConfigError
from services.monitor import ServiceStatus, check_gateway, check_service
from services.runtime.config import Topology, load_topology
from services.runtime.processes import entry_command, tied_to_parent
from services.runtime.tls import load_identity
from services.runtime.users import issue_user_token
from services.supervision import RestartBudget, describe_exit

OPERATOR = "operator"
GATEWAY = "gateway"


def _say(message: str) -> None:
    print(message, flush=True)


def _port_free(host: str, port: int) -> str | None:
    """None if the address can be bound, else why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the servers do: a port in TIME_WAIT is free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _preflight(topology: Topology) -> None:
    for name in [*topology.services, OPERATOR, topology.gateway.name]:
        load_identity(topology.certs_dir, name)
    wanted = [(instance_name(s.name, k), a, f"DIBOAS_{s.name.upper()}_ADDRESS")
              for s in topology.services.values() for k, a in enumerate(s.endpoints)]
    wanted += [("the gateway", topology.gateway.http, "DIBOAS_GATEWAY_HTTP"),
               ("the gateway (HTTPS)", topology.gateway.https, "DIBOAS_GATEWAY_HTTPS"),
               ("the gateway's admin", topology.gateway.admin, "DIBOAS_GATEWAY_ADMIN")]
    for what, address, variable in wanted:
        problem = _port_free(address.host, address.port)
        if problem:
            raise ConfigError(f"{what} cannot listen on {address}: {problem}. Is an earlier "
                              f"`make run` still running? Otherwise set {variable}.")


def instance_name(process: str, k: int) -> str:
    """The launcher's name of instance k of a process: `transaction`, `transaction#1`, ..."""
    return process if k == 0 else f"{process}#{k}"


class Launcher:
    def __init__(self, topology: Topology):
        self.topology = topology
        # Every process of the shape, as many times as its services' instances: name -> (process, k)
        self.units = {instance_name(process, k): (process, k) for process, members in topology.processes.items()
                      for k in range(topology.services[members[0]].instances)}
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs_dir = topology.state_dir / "logs"
        self.budgets = {name: RestartBudget(topology.defaults.restart) for name in [*self.units, GATEWAY]}
        self.given_up: set[str] = set()
        self.stopping = False
        self._restarts: dict[str, asyncio.Task] = {}   # waiting in backoff, or restarted and not yet SERVING
        self._operator = load_identity(topology.certs_dir, OPERATOR)

    def _members(self, name: str) -> tuple[str, ...]:
        """The services a process serves (none for the gateway)."""
        return () if name == GATEWAY else self.topology.processes[self.units[name][0]]

    def _addresses(self, name: str) -> str:
        if name == GATEWAY:
            return str(self.topology.gateway.http)
        (process, k), members = self.units[name], self._members(name)
        if members == (process,):
            return str(self.topology.services[process].instance_address(k))
        return ", ".join(members)

    def _spawn(self, name: str, verb: str = "starting") -> None:
        # From the event loop's thread only: the parent-death signal follows the thread that forked.
        log_path = self.logs_dir / f"{name}.log"
        with open(log_path, "ab") as log_file:
            # Own session: Ctrl-C reaches the launcher only, which stops the children in order.
            process, k = self.units.get(name, (name, 0))
            self.processes[name] = subprocess.Popen(
                tied_to_parent(entry_command(process, GATEWAY)), stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, "DIBOAS_INSTANCE": str(k)}, start_new_session=True)
        _say(f"  {verb:<8} {name:<12} {self._addresses(name):<18} pid {self.processes[name].pid:<7} "
             f"log {log_path}")

    async def _health(self, name: str) -> ServiceStatus:
        """The gateway's health, a service's, or a process's: SERVING once each of its services is."""
        if name == GATEWAY:
            return await check_gateway(self.topology, timeout=1)
        k = self.units[name][1]
        statuses = await asyncio.gather(*(check_service(self.topology, member, self._operator, timeout=1, instance=k)
                                          for member in self._members(name)))
        return next((status for status in statuses if status.status != "SERVING"), statuses[0])

    def start(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for name in self.units:
            self._spawn(name)

    async def start_gateway(self) -> bool:
        """Envoy, once the services are SERVING; True when it and every upstream are healthy."""
        self._spawn(GATEWAY)
        started = time.monotonic()
        last = ""
        while True:
            code = self.processes[GATEWAY].poll()
            if code is not None:
                _say(f"  the gateway exited ({describe_exit(code)}) while starting; last lines of its log:")
                _say(_tail(self.logs_dir / f"{GATEWAY}.log"))
                return False
            status = await self._health(GATEWAY)
            if status.status == "SERVING":
                _say(f"  ready    {GATEWAY:<12} SERVING after {time.monotonic() - started:.1f}s (Envoy, "
                     f"every upstream healthy)")
                return True
            if status.error != last and status.status != "UNREACHABLE":
                _say(f"  waiting  {GATEWAY:<12} {status.error}")
                last = status.error
            if time.monotonic() - started > self.topology.defaults.start_timeout_seconds:
                _say(f"  gave up on the gateway: {status.status} {status.error} (see {self.logs_dir}/gateway.log)")
                return False
            await asyncio.sleep(0.2)

    async def wait_until_serving(self) -> bool:
        started = time.monotonic()
        pending = [instance_name(service, k) for service, svc in self.topology.services.items()
                   for k in range(svc.instances)]
        while pending:
            for name in list(pending):
                service, _, k = name.partition("#")
                process = instance_name(self.topology.process_of(service), int(k or 0))
                code = self.processes[process].poll()
                if code is not None:
                    what = name if process == name else f"{name}'s process {process}"
                    _say(f"  {what} exited ({describe_exit(code)}) while starting; last lines of its log:")
                    _say(_tail(self.logs_dir / f"{process}.log"))
                    return False
                status = await check_service(self.topology, service, self._operator, timeout=1, instance=int(k or 0))
                if status.status == "SERVING":
                    _say(f"  ready    {name:<12} SERVING after {time.monotonic() - started:.1f}s")
                    pending.remove(name)
            limit = self.topology.defaults.start_timeout_seconds
            if pending and time.monotonic() - started > limit:
                _say(f"  gave up after {limit:.0f}s; not serving: {', '.join(pending)}"
                     f" (see their logs in {self.logs_dir})")
                return False
            await asyncio.sleep(0.2)
        return True

    # --- supervision, once everything is up ---------------------------------------------------

    async def supervise(self) -> None:
        """Until `halt`: restart whatever exits by itself, with backoff; give up on a crash loop."""
        while not self.stopping:
            for name, process in list(self.processes.items()):
                if name not in self._restarts and name not in self.given_up and process.poll() is not None:
                    self._exited(name, process.returncode)
            await asyncio.sleep(0.2)

    def _exited(self, name: str, code: int) -> None:
        _say(f"\n{name} exited unexpectedly ({describe_exit(code)}); last lines of its log:")
        _say(_tail(self.logs_dir / f"{name}.log", lines=6))
        decision = self.budgets[name].exited()
        policy = self.topology.defaults.restart
        if decision.restart:
            _say(f"  restarting {name} in {decision.delay:.1f}s (attempt {decision.attempt}; "
                 f"{policy.crash_loop_exits} exits within {policy.crash_loop_seconds:g}s are a crash loop)")
            self._restarts[name] = asyncio.create_task(self._restart(name, decision.delay))
            return
        self.given_up.add(name)
        members = self._members(name)
        if name == GATEWAY:
            impact = "the REST API is down; the services still answer gRPC"
        elif len(members) == 1:
            impact = f"the gateway answers 503 for {members[0]}'s routes and its callers see it UNAVAILABLE"
        else:
            impact = (f"the gateway answers 503 for the routes of {', '.join(members)} and their callers see "
                      "them UNAVAILABLE")
        _say(f"  CRASH LOOP: giving up on {name}: it exited {decision.attempt} times within "
             f"{policy.crash_loop_seconds:g}s. It stays down; the rest keeps running ({impact}).\n"
             f"  To do: read {self.logs_dir / f'{name}.log'} (its last lines are above), fix the cause, then "
             f"`kill -USR1 {os.getpid()}` to try it again (or Ctrl-C and `make run` again).")

    async def _restart(self, name: str, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            if self.stopping:
                return
            try:
                self._spawn(name, verb="restart")
            except OSError as exc:   # counted as another exit: `supervise` still sees the old one
                _say(f"  could not start {name}: {exc}")
                return
            await self._until_serving_again(name)
        finally:
            self._restarts.pop(name, None)

    async def _until_serving_again(self, name: str) -> None:
        """Say when a restarted process is SERVING; an exit meanwhile is left to `supervise`."""
        process, started = self.processes[name], time.monotonic()
        limit = self.topology.defaults.start_timeout_seconds
        while process.poll() is None:
            status = await self._health(name)
            if status.status == "SERVING":
                _say(f"  ready    {name:<12} SERVING again after {time.monotonic() - started:.1f}s")
                return
            if time.monotonic() - started > limit:
                _say(f"  {name} is not SERVING {limit:.0f}s after its restart: {status.status} {status.error}")
                return
            await asyncio.sleep(0.2)

    def retry_given_up(self) -> None:
        """SIGUSR1: start the given-up processes again, with their exits forgotten."""
        if self.stopping:
            return
        if not self.given_up:
            _say("  SIGUSR1: nothing was given up; nothing to retry")
        for name in sorted(self.given_up):
            self.given_up.discard(name)
            self.budgets[name].reset()
            _say(f"\n  SIGUSR1: trying {name} again")
            self._restarts[name] = asyncio.create_task(self._restart(name, 0))

    def halt(self) -> None:
        """No more restarts (an orderly stop follows): one waiting in backoff is dropped."""
        self.stopping = True
        for task in self._restarts.values():
            task.cancel()

    async def settle(self) -> None:
        """After `halt`: until every dropped restart has finished."""
        await asyncio.gather(*self._restarts.values(), return_exceptions=True)

    def stop(self, timeout: float) -> None:
        """SIGTERM in dependency order (callers before the services they call), each batch drained
        before the next; whatever does not stop within `timeout` of its SIGTERM is killed (each
        batch gets the whole drain time: a slow caller must not cut its upstreams' drain short)."""
        for processes in [[GATEWAY], *stop_order(self.topology)]:     # the gateway calls every service
            batch = [name for name in self.processes if self.units.get(name, (name, 0))[0] in processes]
            deadline = time.monotonic() + timeout
            running = [n for n in batch if n in self.processes and self.processes[n].poll() is None]
            for name in running:
                self.processes[name].send_signal(signal.SIGTERM)
            for name in running:
                try:
                    self.processes[name].wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _say(f"  {name} did not stop within {timeout:.0f}s; killing it")
                    self.processes[name].kill()
                    self.processes[name].wait()
        _say("  everything stopped")

    def kill(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()


def stop_order(topology: Topology) -> list[list[str]]:
    """Batches of processes to stop: first those no remaining process calls, then their upstreams."""
    remaining = list(topology.processes)

    def calls(process: str) -> set[str]:
        return {topology.process_of(up) for member in topology.processes[process]
                for up in topology.services[member].upstreams} - {process}
    batches = []
    while remaining:
        called = {up for name in remaining for up in calls(name)}
        batch = [name for name in remaining if name not in called] or remaining[:]  # a cycle: all at once
        batches.append(batch)
        remaining = [name for name in remaining if name not in batch]
    return batches


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join("    " + line for line in path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "    (no log)"


def _banner(topology: Topology) -> str:
    certs = os.path.relpath(topology.certs_dir)
    rows = "\n".join(f"  {s.name if k == 0 else f'{s.name}#{k}':<12} grpcs://{s.instance_address(k)}   "
                     f"metrics http://{s.instance_metrics(k)}/metrics"
                     for s in topology.services.values() for k in range(s.instances))
    # `diboas health` reads the topology from its own environment: the settings that change what it asks.
    settings = " ".join(f"{key}={value}" for key, value in sorted(os.environ.items())
                        if key == "DIBOAS_MESSAGING_TRANSPORT" or (key.startswith("DIBOAS_") and key.endswith("_INSTANCES")))
    g = topology.gateway
    token = issue_user_token(topology.certs_dir, "alice", ["user"], ttl_seconds=3600)
    wallet = topology.services.get("wallet") or next(iter(topology.services.values()))
    return f"""
The diBoaS mesh is up (data in {os.path.relpath(topology.state_dir)}/):
  REST API     http://{g.http} and https://{g.https} (CA {certs}/ca.crt)   (Envoy; admin http://{g.admin}, loopback only)
{rows}

Try the REST API as the user "alice" (this token lasts an hour; `.venv/bin/diboas user-token NAME` makes more):
  TOKEN={token}
  curl -s -X POST "http://{g.http}/v1/wallets?requestId=w-$(date +%s%N)" \\
       -H "authorization: Bearer $TOKEN" -d '{{"currencyCode": "USD"}}'
  curl -s http://{g.http}/v1/providers -H "authorization: Bearer $TOKEN"
  .venv/bin/diboas demo            # a deposit, a send, a bridge, a withdrawal, and compliance at work, step by step

Or gRPC directly, with buf curl (installed by `make setup`; grpcurl takes the same files) and the
operator certificate:
  node_modules/.bin/buf curl --protocol grpc --cacert {certs}/ca.crt --cert {certs}/operator.crt \\
    --key {certs}/operator.key --servername {wallet.name} --list-services https://{wallet.address}

Health of everything: {settings + " " if settings else ""}.venv/bin/diboas health        Press Ctrl-C to stop everything.
"""


async def _up(launcher: Launcher) -> bool:
    return await launcher.wait_until_serving() and await launcher.start_gateway()


async def _main() -> int:
    topology = load_topology()
    _preflight(topology)
    launcher = Launcher(topology)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: no more waiting
            _say("  killing the services")
            launcher.kill()
        launcher.halt()    # at once: nothing waiting in backoff is restarted from now on
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGUSR1, launcher.retry_given_up)
    processes = len(topology.processes)
    _say(f"Starting the diBoaS mesh ({len(topology.services)} services in {processes} "
         f"process{'es' if processes > 1 else ''}, shape '{topology.mode}', and the gateway; topology "
         f"{os.path.relpath(topology.path)})")
    code = 0
    try:
        launcher.start()
        ready = asyncio.ensure_future(_up(launcher))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            ready.cancel()
            _say("\nStopping before everything was up...")
        elif not ready.result():
            code = 1
        else:
            _say(_banner(topology))
            supervision = asyncio.ensure_future(launcher.supervise())
            await stop.wait()
            await supervision
            _say("\nStopping (draining in-flight calls; Ctrl-C again to kill)...")
            if launcher.given_up:
                _say(f"  given up earlier (crash loop): {', '.join(sorted(launcher.given_up))}")
                code = 1
    finally:
        launcher.halt()
        await launcher.settle()
        # In a thread, so a second Ctrl-C is still heard while the services drain.
        await asyncio.to_thread(launcher.stop, topology.defaults.drain_seconds + topology.defaults.unready_seconds + 5)
    return code


def main() -> None:
    try:
        sys.exit(asyncio.run(_main()))
    except ConfigError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
