"""Make generated/ from protos/: Python stubs, type stubs and the descriptor set.

    python -m tools.generate          # (re)write generated/
    python -m tools.generate --check  # fail (exit 1) when generated/ is stale

Output, all of it committed:

    generated/python/diboas/...        *_pb2.py, *_pb2_grpc.py, *.pyi (mypy-protobuf), __init__.py
    generated/descriptors/diboas.binpb descriptor set of the diboas protos plus google.rpc
                                       status and error details (imports and source info
                                       included) for Envoy's gRPC-JSON transcoder
    generated/openapi/openapi.json     the REST API's OpenAPI 3.1 document, from that set and
                                       the gateway's routes in mesh.yaml (tools/openapi.py)

Only the diboas/* protos get Python code: google.api and google.rpc modules come from
googleapis-common-protos at run time. Generation happens in a temporary directory that
then replaces generated/, so a failed run leaves the previous output in place. The output
is deterministic (sorted inputs, no timestamps), which is what makes --check possible.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import os
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tools import openapi

ROOT = Path(__file__).resolve().parent.parent
# Protos compiled into the descriptor set besides ours (error detail types for Envoy).
EXTRA_DESCRIPTOR_PROTOS = ("google/rpc/error_details.proto", "google/rpc/status.proto")
DESCRIPTOR_SET = Path("descriptors") / "diboas.binpb"
OPENAPI = Path("openapi") / "openapi.json"
# Files that appear next to generated code at run time and are never compared.
IGNORED_NAMES = {"__pycache__", ".pytest_cache", ".mypy_cache"}


class GenerateError(RuntimeError):
    """protoc or a plugin failed; the message carries its output."""


@dataclass
class Diff:
    """Differences between the expected (fresh) output and generated/."""

    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.extra)

    def report(self) -> str:
        lines = []
        for label, paths in (("differs", self.changed), ("missing", self.missing), ("extra", self.extra)):
            lines += [f"  {label}: {p}" for p in paths]
        return "\n".join(lines)


def diboas_protos(protos_dir: Path) -> list[str]:
    """The diboas/*.proto files, relative to protos_dir, sorted (deterministic order)."""
    return sorted(p.relative_to(protos_dir).as_posix() for p in (protos_dir / "diboas").rglob("*.proto"))


def _protoc(args: list[str], protos_dir: Path) -> None:
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    scripts = Path(sysconfig.get_path("scripts"))
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"--proto_path={protos_dir}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        *args,
    ]
    # Run from protos_dir so that nothing in the output depends on the caller's cwd.
    proc = subprocess.run(cmd, cwd=protos_dir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GenerateError(f"protoc failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    for line in proc.stderr.splitlines():  # warnings (the mypy plugins run with `quiet`)
        print(f"generate: protoc: {line}", file=sys.stderr)


def generate_into(out: Path, protos_dir: Path) -> int:
    """Write the whole generated tree into the empty directory out; returns its file count."""
    protos = diboas_protos(protos_dir)
    if not protos:
        raise GenerateError(f"no .proto files under {protos_dir / 'diboas'}")
    py_out = out / "python"
    py_out.mkdir(parents=True)
    print(f"generate: protoc on {len(protos)} protos -> python, grpc, mypy stubs", flush=True)
    _protoc(
        [f"--python_out={py_out}", f"--grpc_python_out={py_out}",
         f"--mypy_out=quiet:{py_out}", f"--mypy_grpc_out=quiet:{py_out}", *protos],
        protos_dir,
    )
    # Every directory under python/ is a regular package (diboas/, diboas/wallet/, ...).
    for directory in sorted({p.parent for p in py_out.rglob("*.py")}):
        while directory != py_out:
            (directory / "__init__.py").touch()
            directory = directory.parent
    (out / DESCRIPTOR_SET).parent.mkdir(parents=True)
    print(f"generate: descriptor set -> generated/{DESCRIPTOR_SET.as_posix()} (+ {', '.join(EXTRA_DESCRIPTOR_PROTOS)})", flush=True)
    _protoc(
        [f"--descriptor_set_out={out / DESCRIPTOR_SET}", "--include_imports", "--include_source_info",
         *protos, *EXTRA_DESCRIPTOR_PROTOS],
        protos_dir,
    )
    print(f"generate: OpenAPI 3.1 -> generated/{OPENAPI.as_posix()}", flush=True)
    (out / OPENAPI).parent.mkdir(parents=True)
    try:
        (out / OPENAPI).write_text(openapi.render(out / DESCRIPTOR_SET, protos_dir.parent))
    except openapi.OpenApiError as exc:
        raise GenerateError(f"OpenAPI: {exc}") from None
    return sum(1 for _ in _files(out))


def _files(tree: Path) -> list[str]:
    """Relative paths of the files in tree, sorted, without run-time caches."""
    found = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_NAMES)
        for name in filenames:
            if not name.endswith(".pyc"):
                found.append((Path(dirpath) / name).relative_to(tree).as_posix())
    return sorted(found)


def compare(expected: Path, actual: Path) -> Diff:
    """Byte-for-byte comparison of two generated trees."""
    want = set(_files(expected))
    have = set(_files(actual)) if actual.is_dir() else set()
    diff = Diff(missing=sorted(want - have), extra=sorted(have - want))
    for rel in sorted(want & have):
        if not filecmp.cmp(expected / rel, actual / rel, shallow=False):
            diff.changed.append(rel)
    return diff


def generate(root: Path = ROOT) -> None:
    """Regenerate root/generated from root/protos, replacing it only when generation succeeded."""
    target = root / "generated"
    with tempfile.TemporaryDirectory(prefix=".generated-", dir=root) as tmp:
        fresh = Path(tmp) / "generated"
        count = generate_into(fresh, root / "protos")
        old = Path(tmp) / "old"
        if target.exists():
            target.rename(old)  # same filesystem: two renames, the old tree is removed with tmp
        fresh.rename(target)
    print(f"generate: wrote {count} files to {target.relative_to(root)}/")


def check(root: Path = ROOT) -> Diff:
    """Regenerate into a temporary directory and compare it with root/generated."""
    with tempfile.TemporaryDirectory(prefix="diboas-generate-check-") as tmp:
        fresh = Path(tmp) / "generated"
        generate_into(fresh, root / "protos")
        return compare(fresh, root / "generated")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare generated/ with a fresh run; exit 1 when stale")
    args = parser.parse_args(argv)
    try:
        if not args.check:
            generate()
            return 0
        diff = check()
    except GenerateError as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 2
    if diff:
        print("generate --check: generated/ is stale:\n" + diff.report(), file=sys.stderr)
        print("generate --check: run `make generate` and commit the result", file=sys.stderr)
        return 1
    print("generate --check: generated/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
