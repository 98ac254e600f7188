"""constraints-floors.txt (what `make floors` installs) pins every dependency of pyproject.toml at its floor."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def declared() -> dict[str, str]:
    """name -> floor of every requirement in pyproject's dependencies and optional-dependencies."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"]) + [r for group in project["optional-dependencies"].values() for r in group]
    floors = {}
    for r in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([A-Za-z0-9_.]+)", r.strip())
        assert m, f"pyproject requirement {r!r} has no plain '>=' floor"
        floors[m.group(1).lower()] = m.group(2)
    return floors


def pinned() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints-floors.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def release(v: str) -> tuple:
    """2.5 and 2.5.0 are the same release; post/dev suffixes stay significant."""
    parts = v.split(".")
    while len(parts) > 1 and parts[-1] == "0":
        parts.pop()
    return tuple(parts)


def test_every_dependency_is_pinned_at_its_floor():
    floors, pins = declared(), pinned()
    assert set(pins) == set(floors), (f"constraints-floors.txt and pyproject.toml name different packages: "
                                      f"only pinned {sorted(set(pins) - set(floors))}, "
                                      f"only declared {sorted(set(floors) - set(pins))}")
    wrong = {n: (floors[n], pins[n]) for n in floors if release(floors[n]) != release(pins[n])}
    assert not wrong, f"floor (pyproject) vs pin (constraints-floors.txt): {wrong}"


def test_release_compares_like_pip():
    assert release("2.5") == release("2.5.0") and release("1.0") == release("1.0.0.0")
    assert release("2.5") != release("2.5.1") and release("0.1.5") != release("0.1.5.post20221221")
