"""python -m services.provider: serve the provider service as configured in the topology."""
from services.runtime.server import run
from services.provider.app import build

run("provider", build)
