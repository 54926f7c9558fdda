"""The README's walkthrough, run verbatim (bar the address and data folder) against the stack."""

import re
import subprocess

from tests.e2e.conftest import ROOT, Stack


def walkthrough_script() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Walkthrough", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) >= 2, "the walkthrough lost its shell blocks"
    return "\n".join(blocks)


def test_the_readme_walkthrough_works_as_written(stack: Stack) -> None:
    script = walkthrough_script()
    assert "http://127.0.0.1:8000" in script
    assert ".data/operator-token" in script
    script = script.replace("http://127.0.0.1:8000", stack.url).replace(
        ".data/operator-token", str(stack.data / "operator-token")
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert '"status":"succeeded"' in done.stdout
    assert '"result":{"hello":"world"}' in done.stdout
    assert '"code":"malformed_key"' in done.stdout
