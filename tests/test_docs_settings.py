"""docs/configuration.md's table names every setting, and nothing that is not one."""

from __future__ import annotations

import re

from service.settings import ApiSettings
from tests.procs import ROOT
from worker.settings import WorkerSettings


def documented() -> set[str]:
    """The variables in the first column of the table (a row may name several)."""
    rows = [line for line in (ROOT / "docs" / "configuration.md").read_text().splitlines()
            if line.startswith("| `REPAINT_")]
    return {name for row in rows for name in re.findall(r"`(REPAINT_[A-Z0-9_]+)`", row.split("|")[1])}


def test_every_setting_is_in_the_table_and_every_row_is_read_by_the_code():
    settings = {f"REPAINT_{name.upper()}" for cls in (WorkerSettings, ApiSettings) for name in cls.model_fields}
    assert settings - documented() == set(), "settings missing from docs/configuration.md"
    # The rest are read by the command line (`repaint serve`, `repaint submit`, ...) or a module of its own.
    code = "".join(path.read_text() for folder in ("service", "worker") for path in (ROOT / folder).glob("*.py"))
    assert {name for name in documented() - settings if name not in code} == set(), "documented but read nowhere"
