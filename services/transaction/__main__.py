"""python -m services.transaction: serve the transaction service alone, as configured in the topology."""
from services.runtime.server import run

run("transaction", ("transaction",))
