"""Reading the table `rtguard demo` ends with, by row name, whatever its column width."""

from __future__ import annotations


def summary_rows(stdout: str) -> dict[str, str]:
    """The summary's rows: name, two or more spaces, value (the first two lines are its
    header)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("rtguard demo "))
    rows = [line.split("  ", 1) for line in lines[start + 2 :]]
    return {name.strip(): value.strip() for name, value in rows}
