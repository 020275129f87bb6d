"""python -m services.wallet: serve the wallet service as configured in the topology."""
from services.runtime.server import run
from services.wallet.app import build

run("wallet", build)
