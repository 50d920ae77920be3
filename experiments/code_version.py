"""Which code ran: the git commit of a checkout and whether it had uncommitted changes."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state(repo: Path) -> dict[str, str]:
    """Commit and dirty flag of the code that runs (tags), or 'unknown' outside a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
        return {"git.commit": commit.stdout.strip(), "git.dirty": str(bool(dirty.stdout.strip())).lower()}
    except (OSError, subprocess.CalledProcessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
