"""The reliability table: each test that feeds a bad input or injects a fault records what
happened, and `make reliability` writes them to docs/reliability.md
(LOFIPIPE_RELIABILITY_DOC=path; see conftest.pytest_sessionfinish)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

HEADER = """# Reliability: inputs tried and faults injected

Written by `make reliability`, which runs the tests that feed lofipipe bad inputs and
inject faults (`-m reliability`) and records here what each one led to. A row's result is
what the test checked; "rows lost" and "duplicates" compare the good data's outputs with
those of a clean run (they must be 0).

"""


@dataclass(frozen=True)
class Outcome:
    kind: str  # input | fault
    case: str
    result: str
    test: str
    rows_lost: int = 0
    duplicates: int = 0


RECORDED: list[Outcome] = []


def record(
    kind: str, case: str, result: str, test: str, rows_lost: int = 0, duplicates: int = 0
) -> None:
    RECORDED.append(Outcome(kind, case, result, test, rows_lost, duplicates))


def _cell(text: str) -> str:
    """Markdown-safe, with the tests' temporary folders as <tmp>."""
    text = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/\s:'`]+", "<tmp>", text)
    return text.replace("|", "\\|").replace("\n", " ")


def write_table(path: Path) -> None:
    lines = [HEADER]
    for kind, title in (("input", "Bad inputs"), ("fault", "Injected faults")):
        rows = [o for o in RECORDED if o.kind == kind]
        lines += [
            f"## {title} ({len(rows)})",
            "",
            "| case | result | rows lost | duplicates | test |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {_cell(o.case)} | {_cell(o.result)} | {o.rows_lost} | {o.duplicates} | `{o.test}` |"
            for o in rows
        ]
        lines.append("")
    inputs = sum(o.kind == "input" for o in RECORDED)
    faults = sum(o.kind == "fault" for o in RECORDED)
    lines.append(
        f"Totals: {inputs} inputs tried, {faults} faults injected, "
        f"{sum(o.rows_lost for o in RECORDED)} rows lost, "
        f"{sum(o.duplicates for o in RECORDED)} duplicates.\n"
    )
    path.write_text("\n".join(lines))
