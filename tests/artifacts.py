"""Files tests leave for a person to look at (screenshots), listed in pytest's terminal summary."""

from pathlib import Path

# Git-ignored; CI may keep the folder as a build artefact.
ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "artifacts"

_recorded: dict[str, Path] = {}


def record(*, description: str, path: Path) -> None:
    """List `path` (a file or a folder) in the summary under `description`."""
    _recorded[description] = path


def lines() -> list[str]:
    """One `description: path` line per recorded artefact."""
    return [f"{description}: {path}" for description, path in _recorded.items()]
