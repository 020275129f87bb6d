"""Settings for one run of a mesh, put into this process's environment (which the launcher's
children inherit) and taken out again afterwards."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping


@contextlib.contextmanager
def overridden(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `values` set, as it was before once the block ends."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
