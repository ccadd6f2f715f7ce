"""The installed Helix version."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """The version of the installed `helix` distribution, or `0+unknown` from a bare tree."""
    try:
        return metadata.version("helix")
    except metadata.PackageNotFoundError:
        return "0+unknown"
