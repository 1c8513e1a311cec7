"""The version is one number: pyproject.toml, heterograd.__version__ and the newest CHANGELOG.md heading agree."""

import re
import tomllib
from pathlib import Path

from heterograd import __version__

ROOT = Path(__file__).resolve().parents[1]


def test_version_agrees_with_pyproject_and_changelog():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["version"] == __version__
    headings = re.findall(r"^## (\d+\.\d+\.\d+)", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), flags=re.M)
    assert headings and headings[0] == __version__, (headings[:1], __version__)
