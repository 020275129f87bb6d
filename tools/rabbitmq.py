"""Throwaway RabbitMQ virtual hosts for test and benchmark runs, removed afterwards.

Made with `rabbitmqctl` (it needs to run as root, or as the broker's user, on the broker's
machine), so nothing of a run is left behind on the shared local broker. Each rabbitmqctl call
starts an Erlang VM (about half a second): `ScratchVhosts` makes and deletes many vhosts (one per
test) in a background thread, so that a run waits for neither.
"""
from __future__ import annotations

import contextlib
import queue
import socket
import subprocess
import threading
import uuid
from typing import Callable, Iterator

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


def url_of(vhost: str) -> str:
    return f"amqp://guest:guest@{HOST}:{PORT}/{vhost}"


def _make_vhost(prefix: str) -> str:
    vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except BaseException:
        rabbitmqctl("delete_vhost", vhost)
        raise
    return vhost


@contextlib.contextmanager
def scratch_vhost(prefix: str = "diboas-test") -> Iterator[str]:
    """An AMQP URL of a new virtual host on the local broker (guest/guest), deleted on exit."""
    vhost = _make_vhost(prefix)
    try:
        yield url_of(vhost)
    finally:
        rabbitmqctl("delete_vhost", vhost)


class ScratchVhosts:
    """Virtual hosts for many runs, one after the other: `take()` gives the URL of a new one (made
    while the previous run went on) and starts making the next; `give_back(url)` has it deleted
    in the background; `close()` waits for every deletion and deletes the one made ahead.
    A vhost that could not be made ahead (a run had stopped the broker meanwhile) is made by
    `take()` itself, which raises if that fails too; a deletion that failed is tried again by
    `close()`, which raises if it fails again."""

    def __init__(self, prefix: str = "diboas-test"):
        self._prefix = prefix
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._made: queue.Queue[str | Exception] = queue.Queue()
        self._undeleted: list[str] = []
        self._thread = threading.Thread(target=self._work, name="scratch-vhosts", daemon=True)
        self._thread.start()
        self._jobs.put(self._make)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def _make(self) -> None:
        try:
            self._made.put(_make_vhost(self._prefix))
        except Exception as exc:  # noqa: BLE001 - handed to the take() that waits for it
            self._made.put(exc)

    def _delete(self, vhost: str) -> None:
        try:
            rabbitmqctl("delete_vhost", vhost)
        except Exception:  # noqa: BLE001 - tried again by close()
            self._undeleted.append(vhost)

    def take(self, timeout: float = 120.0) -> str:
        made = self._made.get(timeout=timeout)
        self._jobs.put(self._make)
        return url_of(_make_vhost(self._prefix) if isinstance(made, Exception) else made)

    def give_back(self, url: str) -> None:
        vhost = url.rsplit("/", 1)[1]
        self._jobs.put(lambda: self._delete(vhost))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()
        while not self._made.empty():
            made = self._made.get()
            if not isinstance(made, Exception):
                self._undeleted.append(made)
        for vhost in self._undeleted:
            rabbitmqctl("delete_vhost", vhost)
