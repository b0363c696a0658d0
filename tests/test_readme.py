"""The README's set-up commands are the ones CI runs, and its CLI examples parse."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.strip().splitlines()]


def test_ci_runs_the_readme_install_and_test_commands():
    install, test, main_job = readme_commands()[:3]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install.startswith("pip install")
    assert install.replace("pip install", "pip install -q") in ci
    assert test.startswith("pytest") and test in ci
    assert "KERAS_BACKEND=jax" in test and "KERAS_BACKEND=torch" in test
    assert main_job.startswith("swd-keras search --dataset digits")


def test_cli_datasets_match_the_library():
    from swd_keras.cli.commands.search import DATASETS as CLI_DATASETS

    from swd_keras.data import DATASETS

    assert tuple(CLI_DATASETS) == tuple(DATASETS)
