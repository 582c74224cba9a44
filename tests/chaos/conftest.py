"""The chaos suite: marked ``chaos`` (deselected by default, run by ``make chaos``);
prints the table of every run at the end of the session."""

from __future__ import annotations

import pytest

from .harness import HEADER, REPORT


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "chaos" in item.path.parts:
            item.add_marker(pytest.mark.chaos)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    terminalreporter.section("aiolease chaos table")
    terminalreporter.write_line(HEADER)
    for report in REPORT:
        terminalreporter.write_line(report.row())
    terminalreporter.write_line(
        "ops/ok: transactions run/committed; unkn: CommitUnknown; recov_s: seconds from the"
        " end of the fault to the first success; acq_s: longest acquire; lost/phan: commits"
        " reported but absent / failures reported but present"
    )
