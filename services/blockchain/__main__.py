"""python -m services.blockchain: serve the blockchain service as configured in the topology."""
from services.blockchain.app import build
from services.runtime.server import run

run("blockchain", build)
