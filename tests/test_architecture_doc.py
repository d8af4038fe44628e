"""docs/architecture.md's package map names every module of the code, where it lives."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "workers", "storage", "distillq", "bench")


def package_map() -> dict[str, dict[str, str]]:
    """package -> {entry (``cli.py``, ``teachers/``, ``controller/run.py``): its text}."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Packages", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    out: dict[str, dict[str, str]] = {}
    package = entry = ""
    for line in block.splitlines():
        if re.match(r"\S", line):  # a package: `workers/   what it is`
            package = line.split()[0].rstrip("/")
            out[package] = {}
        elif re.match(r"  \S", line):  # an entry: `  cli.py   what it is`
            entry = line.split()[0]
            out[package][entry] = line
        elif line.strip() and package and entry:  # an entry's continuation
            out[package][entry] += " " + line.strip()
    return out


def test_the_package_map_names_every_module() -> None:
    documented = package_map()
    missing = []
    for package in PACKAGES:
        entries = documented.get(package, {})
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            rel = path.relative_to(ROOT / package).as_posix()
            head, _, name = rel.rpartition("/")
            listed = re.findall(r"[\w/]+\.py", entries.get(f"{head}/", "")) if head else []
            named = rel in entries or name in listed
            if not named:
                missing.append(f"{package}/{rel}")
    assert not missing, f"docs/architecture.md's package map does not name: {missing}"


def test_the_map_names_no_module_that_is_gone() -> None:
    for package, entries in package_map().items():
        for entry in entries:
            if entry.endswith(".py"):
                assert (ROOT / package / entry).is_file(), f"{package}/{entry} is gone"
