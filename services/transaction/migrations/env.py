from services.runtime.migrations_env import run
from services.transaction.tables import metadata

run(metadata)
