"""The benchmark scripts' common ending: the report printed, and written where asked."""

from __future__ import annotations

from pathlib import Path


def write_report(lines: list[str], out: Path | None) -> str:
    """Print the report (markdown lines) and, given ``out``, write it there."""
    report = "\n".join(lines) + "\n"
    print(report)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
    return report
