from services.runtime.migrations_env import run
from services.wallet.tables import metadata

run(metadata)
