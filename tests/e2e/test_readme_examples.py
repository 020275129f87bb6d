"""The README's gRPC examples (buf curl with the operator certificate), run as written against a
mesh of real processes, one command after the other in one bash, each answer checked against the
`# -> ...` the README shows for it. Only the addresses and the certificates' directory are this
test's own (free ports, the test PKI), as they would be on a machine where make run used others."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from services.runtime.config import load_topology

from meshkit import ORDER, mesh_processes

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]

BEGIN, END = "<!-- grpc examples: begin -->", "<!-- grpc examples: end -->"
# Every service's address as the README shows it: mesh.yaml's, without this machine's overrides.
DEFAULT_ADDRESSES = {name: str(service.address) for name, service in load_topology(env={}).services.items()}
SEPARATOR = "@@@ next example @@@"


def readme_commands() -> list[tuple[str, str]]:
    """(command, what its answer must contain) for each command of the README's gRPC examples, in
    order; a command continued with a backslash, or inside a quoted JSON, is one command, its
    expectation on its last line."""
    text = (REPO_ROOT / "README.md").read_text()
    block = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    lines = [line[4:] for line in block.splitlines() if line.startswith("    ")]
    commands, current = [], ""
    for line in lines:
        current += line + "\n"
        if not line.rstrip().endswith("\\") and current.count("'") % 2 == 0:
            expected = re.search(r"#\s*->\s*(.+)$", line)
            commands.append((current, expected.group(1).strip() if expected else ""))
            current = ""
    return commands


def test_the_readme_block_is_found_and_every_answer_is_checked():
    commands = readme_commands()
    assert len(commands) >= 12
    assert sum(bool(expected) for _, expected in commands) >= 8


async def test_the_readme_grpc_examples_run_as_written(pki, tmp_path):
    async with mesh_processes(pki, tmp_path, "services", ORDER) as (topology, processes):
        script = ["set -euo pipefail"]
        for command, _ in readme_commands():
            for name, default in DEFAULT_ADDRESSES.items():
                command = command.replace(default, str(topology.services[name].address))
            script += [command.replace("C=certs/out", f"C={pki}"), f"echo '{SEPARATOR}'"]
        env = dict(processes["wallet"].env)
        done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
        answers = done.stdout.split(SEPARATOR)
        for (command, expected), answer in zip(readme_commands(), answers, strict=False):
            assert expected in answer, (command, expected, answer)
        assert len(answers) == len(readme_commands()) + 1
