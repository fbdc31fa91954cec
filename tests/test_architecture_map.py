"""docs/ARCHITECTURE.md's map stays true: every file it names exists, every rule of the workflow
has a row, and every subcommand it names is one of ``aqnet``'s."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ARCHITECTURE.md"


def _map_rows() -> list[list[str]]:
    text = DOC.read_text()
    section = text[text.index("## The map") : text.index("## Conventions")]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_every_file_the_map_names_exists() -> None:
    text = DOC.read_text()
    section = text[text.index("## The map") : text.index("## Conventions")]
    named = re.findall(r"`((?:src|tests|workflow|profiles|docs)/[^`]+)`", section)
    assert len(named) > 30
    missing = [path for path in named if not (REPO / path).exists()]
    assert not missing, f"docs/ARCHITECTURE.md names files that do not exist: {missing}"


def test_every_rule_has_a_row_and_every_subcommand_is_real() -> None:
    from aqnet.cli import COMMANDS

    rows = _map_rows()
    stages = {s.strip() for row in rows for s in row[0].split(",")}
    rules = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(), flags=re.M))
    assert rules - {"all"} <= stages, f"rules without a row: {sorted(rules - {'all'} - stages)}"
    for row in rows:
        rule_file = row[1].strip("`")
        for stage in row[0].split(","):
            assert re.search(rf"^rule {stage.strip()}:", (REPO / rule_file).read_text(), re.M), (
                f"{stage.strip()} is not in {rule_file}"
            )
        command = re.fullmatch(r"`([a-z-]+)`", row[2])
        if command:
            assert command.group(1) in COMMANDS, row[2]
