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


def rabbitmqctl(*args: str, background: bool = False) -> str:
    """Run rabbitmqctl; `background`: at the lowest CPU priority, for work nobody waits for."""
    command = ["rabbitmqctl", *args]
    done = subprocess.run(["nice", "-n", "19", *command] if background else command,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


def url_of(vhost: str) -> str:
    return f"amqp://guest:guest@{HOST}:{PORT}/{vhost}"


def _new_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _make_vhost(vhost: str, background: bool = False) -> None:
    rabbitmqctl("add_vhost", vhost, background=background)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*", background=background)


def _delete_vhost(vhost: str, background: bool = False) -> None:
    """Delete `vhost`; one that does not exist (its making failed half-way, or never began) is no error."""
    try:
        rabbitmqctl("delete_vhost", vhost, background=background)
    except RuntimeError as exc:
        if "does not exist" not in str(exc):
            raise


@contextlib.contextmanager
def scratch_vhost(prefix: str = "diboas-test") -> Iterator[str]:
    """An AMQP URL of a new virtual host on the local broker (guest/guest), deleted on exit."""
    vhost = _new_name(prefix)
    try:
        _make_vhost(vhost)
        yield url_of(vhost)
    finally:
        _delete_vhost(vhost)


class ScratchVhosts:
    """Virtual hosts for many runs, one after the other: `take()` gives the URL of a new one (made
    while the previous run went on) and starts making the next; `give_back(url)` has it deleted.
    The background work runs at the lowest CPU priority. `close()` waits for it, then deletes
    every vhost of its own still there (the one made ahead, any whose deletion or making
    failed) and raises if one of those deletions fails. A vhost that could not be made ahead
    (a run had stopped the broker meanwhile) is made by `take()` itself, which raises if that
    fails too."""

    def __init__(self, prefix: str = "diboas-test"):
        self._prefix = prefix
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._made: queue.Queue[str | Exception] = queue.Queue()
        self._owned: set[str] = set()       # named before they are made, until they are deleted
        self._thread = threading.Thread(target=self._work, name="scratch-vhosts", daemon=True)
        self._thread.start()
        self._jobs.put(self._make)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def _named(self) -> str:
        vhost = _new_name(self._prefix)
        self._owned.add(vhost)
        return vhost

    def _make(self) -> None:
        vhost = self._named()
        try:
            _make_vhost(vhost, background=True)
            self._made.put(vhost)
        except Exception as exc:  # noqa: BLE001 - handed to the take() that waits for it
            self._made.put(exc)

    def _delete(self, vhost: str) -> None:
        try:
            _delete_vhost(vhost, background=True)
            self._owned.discard(vhost)
        except Exception:  # noqa: BLE001 - still owned: close() tries again
            pass

    def take(self, timeout: float = 120.0) -> str:
        try:
            made = self._made.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"no RabbitMQ virtual host was made within {timeout:g} s") from None
        self._jobs.put(self._make)
        if isinstance(made, Exception):
            made = self._named()
            _make_vhost(made)
        return url_of(made)

    def give_back(self, url: str) -> None:
        vhost = url.rsplit("/", 1)[1]
        self._jobs.put(lambda: self._delete(vhost))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()
        failures = []
        for vhost in sorted(self._owned):
            try:
                _delete_vhost(vhost)
            except RuntimeError as exc:
                failures.append(str(exc))
        if failures:
            raise RuntimeError("RabbitMQ virtual hosts left on the broker: " + "; ".join(failures))
