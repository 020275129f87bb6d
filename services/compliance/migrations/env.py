from services.compliance.tables import metadata
from services.runtime.migrations_env import run

run(metadata)
