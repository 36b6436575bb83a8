"""Reproducible installs: the lock pins every declared dependency, and the versions the parity fixture was recorded
with (tests/fixtures/parity/public.json, "recorded_with")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-lock.txt"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier  # exactly one "==" per line
        assert spec.operator == "==", line
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_the_lock_pins_the_versions_the_parity_fixture_was_recorded_with():
    recorded = json.loads((ROOT / "tests/fixtures/parity/public.json").read_text())["recorded_with"]
    pins = _pins(LOCK)
    assert {name: pins.get(canonicalize_name(name)) for name in recorded} == recorded


def test_the_lock_pins_every_declared_dependency_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    pins = _pins(LOCK)
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(project["name"]):
            continue  # the dev extra names the project's other extras
        assert name in pins, f"{requirement.name} is declared in pyproject.toml but not in the lock: run .ci/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"the lock's {requirement.name}=={pins[name]} is outside pyproject.toml's {requirement}: run .ci/lock"
        )


def test_the_client_lock_pins_what_the_clients_ask_for():
    asked = [Requirement(line) for line in (ROOT / "tests/clients/requirements.in").read_text().splitlines()
             if line.strip() and not line.startswith("#")]  # fmt: skip
    pins = _pins(ROOT / "tests/clients/requirements.lock")
    for requirement in asked:
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)])


def test_every_install_command_uses_the_lock():
    """The README's two commands and CI install through the lock (torch included: no separate torch file)."""
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^pip install [^\n]*", readme, flags=re.M)[:2]
    assert len(commands) == 2 and all("-c requirements-lock.txt" in c for c in commands), commands
    ci = (ROOT / ".ci/run").read_text()
    assert re.search(r"pip install -q -c requirements-lock\.txt -e \"\.\[dev\]\"", ci)
