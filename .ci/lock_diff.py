"""Print the installed versions that differ from requirements-lock.txt (used by .ci/test-latest)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parents[1] / "requirements-lock.txt"


def main() -> None:
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    moved = []
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        locked = next(iter(requirement.specifier)).version
        if installed.get(name, locked) != locked:
            moved.append(f"  {requirement.name}: {locked} (lock) -> {installed[name]}")
    print(f"{len(moved)} installed versions differ from requirements-lock.txt" + (":" if moved else ""))
    print("\n".join(moved))


if __name__ == "__main__":
    main()
