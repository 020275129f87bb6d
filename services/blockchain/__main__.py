"""python -m services.blockchain: serve the blockchain service as configured in the topology."""
from services.runtime.server import run
from services.blockchain.app import build

run("blockchain", build)
