"""Starting the mesh's processes: which module runs each one, and the tie that ends a child
with its parent. Used by the launcher, the gateway (for Envoy) and the tests' process meshes."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

GATEWAY_MODULE = "gateway"      # the top-level gateway/ package: Envoy, its config, its span receiver


def entry_command(name: str, gateway: str = "gateway") -> list[str]:
    """The command line of a process of the topology: the gateway, or `python -m services NAME`,
    which serves the services the topology's shape puts in the process NAME."""
    return [sys.executable, "-m", GATEWAY_MODULE] if name == gateway else [sys.executable, "-m", "services", name]


# Loaded here, in the parent: a forked child (of a process with threads) must not load libraries.
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM if the parent dies (even by SIGKILL)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:           # the parent died before that: do not live on as an orphan
            os._exit(1)
