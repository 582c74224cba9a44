"""The docs' ready-to-run example: ``python -m aiolease demo --metrics`` prints the series."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(180)


def test_demo_metrics_prints_the_series_of_every_part() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "aiolease", "demo", "--metrics"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.split("=== metrics (Prometheus text format) ===")[1]

    def sample(series: str) -> float:
        found = re.search(rf"^{re.escape(series)} (\S+)$", out, re.MULTILINE)
        assert found, f"{series} not in the output"
        return float(found.group(1))

    pool = 'db_client_connection_pool_name="demo"'
    assert sample(f"db_client_connection_wait_time_seconds_count{{{pool}}}") > 0
    assert sample(f"db_client_connection_use_time_seconds_count{{{pool}}}") > 0
    assert sample(f'db_client_connection_create_time_seconds_count{{{pool},error_type=""}}') == 3
    # the demo's pools are closed and gone by now: their state series with them
    assert "# TYPE db_client_connection_max gauge" in out
    assert sample('aiolease_transaction_count_total{aiolease_transaction_outcome="commit"}') > 0
    assert sample('aiolease_transaction_count_total{aiolease_transaction_outcome="retry"}') > 0
    assert "aiolease_limiter_request_time_in_queue_seconds_count{" in out
    assert "# TYPE db_client_connection_count gauge" in out


def test_the_sample_observability_md_shows_is_what_the_demo_prints() -> None:
    """Every series of docs/observability.md's sample appears in the demo's output; the
    pools' state series (closed pools report zeros) with the value the page shows."""
    from pathlib import Path

    page = (Path(__file__).parents[2] / "docs" / "observability.md").read_text()
    block = page.split("## Try it: `python -m aiolease demo --metrics`")[1]
    lines = block.split("```text\n")[1].split("```")[0].splitlines()
    result = subprocess.run(
        [sys.executable, "-m", "aiolease", "demo", "--metrics"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.split("=== metrics (Prometheus text format) ===")[1]
    for line in lines:
        series, shown = line.rsplit(" ", 1)
        found = re.search(rf"^{re.escape(series)} (\S+)$", out, re.MULTILINE)
        assert found, f"{series} (shown in docs/observability.md) not in the output"
        if series.startswith(("db_client_connection_count{", "db_client_connection_max{")):
            assert float(found.group(1)) == float(shown), line
