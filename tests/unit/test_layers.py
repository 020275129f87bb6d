"""The dependency direction: the domain (services/domain) imports nothing from the runtime, nor
grpc, protobuf or SQL, directly or through another module of the project it imports. Read from
the modules' syntax trees (every import statement, in functions too), not by matching text."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("services.runtime", "services.generated", "grpc", "grpc_status", "google.protobuf", "google.rpc",
             "sqlalchemy", "alembic")


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(root: Path, path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved; `from a import b` also counts
    a.b when that is a module."""
    package = ".".join(path.relative_to(root).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names
                         if _module_file(root, f"{module}.{alias.name}"))
    return found


def forbidden_imports(root: Path, start: str = "services/domain") -> list[str]:
    """'importer -> imported' for each forbidden import reached from the module `start` or the modules under it,
    following the imports of the project's own modules."""
    queue = sorted((root / start).rglob("*.py")) if (root / start).is_dir() else [root / start]
    seen: set[Path] = set()
    problems = []
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in sorted(_imports(root, path)):
            if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN):
                problems.append(f"{path.relative_to(root)} -> {module}")
            elif module.split(".")[0] in ("services", "gateway", "bench") and (found := _module_file(root, module)):
                queue.append(found)
    return sorted(problems)


def test_the_domain_imports_neither_the_runtime_nor_grpc_protobuf_or_sql():
    assert forbidden_imports(REPO) == []


# Each service's domain: its entities and rules, its sagas, and the ports its use cases call.
SERVICE_DOMAINS = ("services/wallet/ledger.py", "services/transaction/domain.py", "services/transaction/ports.py",
                   "services/provider/payment.py",
                   "services/transaction/sagas", "services/blockchain/transfers.py",
                   "services/compliance/domain.py", "services/compliance/rules.py",
                   "services/compliance/screening.py")


@pytest.mark.parametrize("start", SERVICE_DOMAINS)
def test_the_services_domain_modules_import_neither_the_runtime_nor_grpc_protobuf_or_sql(start):
    assert (REPO / start).exists()
    assert forbidden_imports(REPO, start) == []


def test_the_check_finds_a_forbidden_import_however_it_is_written(tmp_path):
    # A project in miniature: each domain module reaches the runtime, grpc or SQL its own way.
    files = {
        "services/__init__.py": "",
        "services/neutral.py": "import sqlalchemy.orm\n",
        "services/runtime/__init__.py": "",
        "services/runtime/config.py": "",
        "services/domain/__init__.py": "",
        "services/domain/a.py": "from services.runtime.config import ConfigError\n",
        "services/domain/b.py": "def f():\n    from ..runtime import config\n",
        "services/domain/c.py": "from services import neutral\n",
        "services/domain/d.py": "import grpc\nfrom google.protobuf import any_pb2\n",
        "services/domain/e.py": "from . import a\nfrom .errors import X\n",
        "services/domain/errors.py": "X = 1\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert forbidden_imports(tmp_path) == [
        "services/domain/a.py -> services.runtime.config",
        "services/domain/b.py -> services.runtime",
        "services/domain/b.py -> services.runtime.config",
        "services/domain/d.py -> google.protobuf",
        "services/domain/d.py -> grpc",
        "services/neutral.py -> sqlalchemy.orm",
    ]
