"""Starting the mesh's processes: which module runs each one, and the tie that ends a child
with its parent. Used by the launcher, the gateway (for Envoy) and the tests' process meshes.

The tie is made by a short step in the child (`python -m services.runtime.processes PARENT
COMMAND...`) that asks Linux for SIGTERM when its parent dies and then becomes COMMAND. It is
not done in a `preexec_fn`: Python code run between fork and exec in a child of a process with
threads (gRPC's) can deadlock before the exec (the subprocess documentation warns of it), and
a gateway was seen hung so, its Envoy never started."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

GATEWAY_MODULE = "gateway"      # the top-level gateway/ package: Envoy, its config, its span receiver
PR_SET_PDEATHSIG = 1


def entry_command(name: str, gateway: str = "gateway") -> list[str]:
    """The command line of a process of the topology: the gateway, or `python -m services NAME`,
    which serves the services the topology's shape puts in the process NAME."""
    return [sys.executable, "-m", GATEWAY_MODULE] if name == gateway else [sys.executable, "-m", "services", name]


def tied_to_parent(command: list[str]) -> list[str]:
    """`command`, started so that it gets SIGTERM when this process dies, even by SIGKILL (on
    Linux; elsewhere it runs as it is). The parent is the thread that starts it: start it from
    a thread that lives as long as the process (the event loop's)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-m", __name__, str(os.getpid()), *command]


def _become(parent: int, command: list[str]) -> None:
    """Exit 1 when the tie cannot be made or the parent is gone, 127 when the command is not
    found, 126 when it cannot run (as shells do); otherwise become the command."""
    if ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        print(f"cannot ask for the parent-death signal: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        sys.exit(1)
    if os.getppid() != parent:      # the parent died before that: do not live on as an orphan
        print(f"not starting {command[0]}: its parent (pid {parent}) is gone", file=sys.stderr)
        sys.exit(1)
    for ignored_by_python in (signal.SIGPIPE, signal.SIGXFSZ):  # as the command would get them from a shell
        signal.signal(ignored_by_python, signal.SIG_DFL)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)


if __name__ == "__main__":
    _become(int(sys.argv[1]), sys.argv[2:])
