"""python -m services PROCESS: serve the services that the topology's shape (DIBOAS_MODE or
`mode:` in mesh.yaml) puts in the process named PROCESS, e.g. `monolith`, or `wallet` alone."""
import sys

from services.runtime.server import run

if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
    sys.exit("usage: python -m services PROCESS   (a process of the topology's shape, e.g. monolith or wallet)")
run(sys.argv[1])
