"""The "limits" demo scenario, run on virtual time so its printed times are exact."""

from __future__ import annotations

from limits_helpers import vrun

from aiolease._demo import SCENARIOS
from aiolease._demo.limits import run


def test_limits_scenario_is_registered_after_pool() -> None:
    names = [name for name, _ in SCENARIOS]
    assert "limits" in names
    assert names.index("limits") > names.index("pool")


def test_limits_scenario_output() -> None:
    lines: list[str] = []

    async def body() -> None:
        await run(lines.append)

    vrun(body)
    text = "\n".join(lines)
    for i, t in enumerate(("0.00", "0.50", "1.00", "1.50", "2.00"), start=1):
        assert f"t={t}s  call {i}\n" in text + "\n"
    assert "t=0.30s  dave call 1" in text  # waited for a slot of the shared cap
    assert "RateLimitExceeded(retry_after=1.50)" in text
    assert "t=1.50s  call 1 after the pause" in text
    assert "t=1.70s  call 3 after the pause" in text
