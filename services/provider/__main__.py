"""python -m services.provider: serve the provider service alone, as configured in the topology."""
from services.runtime.server import run

run("provider", ("provider",))
