"""python -m services.wallet: serve the wallet service alone, as configured in the topology."""
from services.runtime.server import run

run("wallet", ("wallet",))
