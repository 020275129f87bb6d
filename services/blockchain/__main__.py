"""python -m services.blockchain: serve the blockchain service alone, as configured in the topology."""
from services.runtime.server import run

run("blockchain", ("blockchain",))
