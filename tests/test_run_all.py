"""run_all.sh checks its arguments before it installs or runs anything, and uses only the project's kernel."""

from __future__ import annotations

import os
import subprocess

import pytest

from longalign import paths


@pytest.mark.parametrize("args,message", [
    (["--profile", "nope"], "no profile 'nope'"), (["--profile=../x"], "no profile '../x'"),
    (["99"], "no notebook matches '99'"), (["--fast"], "unknown option '--fast'"), (["--profile"], "usage:")])
def test_bad_arguments_fail_before_setup(tmp_path, args, message):
    venv = tmp_path / "venv"  # setup_env.sh would create this venv: it must not even be started
    env = {**os.environ, "LONGALIGN_VENV": str(venv), "LONGALIGN_OUTPUTS": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(paths.ROOT / "run_all.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not venv.exists() and not (tmp_path / "out").exists()


def test_scripts_register_and_use_only_the_project_kernel():
    setup = (paths.ROOT / "scripts" / "setup_env.sh").read_text()
    installs = [line for line in setup.splitlines() if "ipykernel install" in line and not line.lstrip().startswith("#")]
    assert installs and all("--sys-prefix --name longalign" in line for line in installs)
    for script in ("run_notebooks.py", "prepare_notebook_tests.py"):
        text = (paths.ROOT / "scripts" / script).read_text()
        assert '"python3"' not in text and '"longalign"' in text
