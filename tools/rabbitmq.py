"""A throwaway RabbitMQ virtual host for a test or benchmark run, removed afterwards.

Made with `rabbitmqctl` (it needs to run as root, or as the broker's user, on the broker's
machine), so nothing of a run is left behind on the shared local broker.
"""
from __future__ import annotations

import contextlib
import socket
import subprocess
import uuid
from typing import Iterator

HOST, PORT = "127.0.0.1", 5672


def reachable(host: str = HOST, port: int = PORT) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


@contextlib.contextmanager
def scratch_vhost(prefix: str = "diboas-test") -> Iterator[str]:
    """An AMQP URL of a new virtual host on the local broker (guest/guest), deleted on exit."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{HOST}:{PORT}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)
