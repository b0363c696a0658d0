"""The wheel holds the package ``swd_keras`` alone: the command's code from the
repository's ``cli/`` folder as ``swd_keras.cli``, every package of the repository, and
the ``swd-keras`` console script."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _packages(folder: Path, prefix: str) -> set[str]:
    return {".".join((prefix, *init.parent.relative_to(folder).parts))
            for init in folder.rglob("__init__.py")}


def test_the_wheel_installs_swd_keras_and_no_top_level_cli(tmp_path):
    source = tmp_path / "source"  # built from a copy: the build leaves its files behind
    source.mkdir()
    for name in ("swd_keras", "cli"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(source), "-w", str(tmp_path / "wheel")],
        capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("swd_keras-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"swd_keras"}
    packaged = {".".join(Path(n).parent.parts) for n in names if n.endswith("/__init__.py")}
    assert packaged == (_packages(ROOT / "swd_keras", "swd_keras")
                        | _packages(ROOT / "cli", "swd_keras.cli"))
    assert "swd_keras/builtin_genotypes/swd_nas_paper.json" in names
    assert "swd-keras = swd_keras.cli.main:main" in entry_points
