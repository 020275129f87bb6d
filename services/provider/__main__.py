"""python -m services.provider: serve the provider service as configured in the topology."""
from services.provider.app import build
from services.runtime.server import run

run("provider", build)
