"""python -m services.transaction: serve the transaction service as configured in the topology."""
from services.runtime.server import run
from services.transaction.app import build

run("transaction", build)
