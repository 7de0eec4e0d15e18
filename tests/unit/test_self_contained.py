"""The repository stands on its own: nothing in it points outside the clone.

A user who clones the repository has only the clone; code, tests, scripts and settings defaults
that read a sibling folder or an absolute path of some machine fail there.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from config import REPO_ROOT, Settings

OUTSIDE = re.compile(
    r"""\.\./shared|/work/|\.parent\s*/\s*["']shared["']|REPO_ROOT\.parent|/home/\w|/root/\w"""
)
"""A sibling folder, or an absolute path of a particular machine."""
TEXT_SUFFIXES = {".py", ".sh", ".toml", ".yml", ".yaml", ".cfg", ".ini", ".txt", ".xml", ".md", ""}


def tracked_files() -> list[Path]:
    """Every file git tracks (and any new one not ignored), as paths in the clone."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    return [REPO_ROOT / line for line in out.splitlines() if (REPO_ROOT / line).is_file()]


def test_the_pattern_catches_paths_outside_the_clone() -> None:
    for line in ('SAMPLE = Path("/work/shared/data/x.csv")', "cat ../shared/data/README.md",
                 'REPO_ROOT.parent / "shared" / "data"', "root = Path(__file__).parent / 'shared'"):
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search('REPO_ROOT / "data" / "taobao_user_behavior_sample.csv"')


def test_no_file_of_the_repository_points_outside_the_clone() -> None:
    files = [f for f in tracked_files() if f.suffix in TEXT_SUFFIXES and f != Path(__file__)]
    assert len(files) > 50  # the listing itself works
    offenders = []
    for f in files:
        try:
            text = f.read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{f.relative_to(REPO_ROOT)}:{n}: {line.strip()}"
                      for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert offenders == []


def test_every_default_path_of_the_settings_lies_in_the_clone() -> None:
    defaults = {name: field.default for name, field in Settings.model_fields.items()
                if isinstance(field.default, Path)}
    assert "sample_log" in defaults
    for name, path in defaults.items():
        resolved = path if path.is_absolute() else (REPO_ROOT / path)
        assert resolved.resolve().is_relative_to(REPO_ROOT), name
    assert defaults["sample_log"].is_file()
