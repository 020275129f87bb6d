"""python -m services.compliance: serve the compliance service alone, as configured in the topology."""
from services.runtime.server import run

run("compliance", ("compliance",))
