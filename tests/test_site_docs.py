"""The documentation site: its programs run, its examples are current, and it builds and renders.

* Every ```python block of docs/integrations.md is a complete program, run here
  in a fresh interpreter (warnings are errors).
* docs/fastapi.md shows examples/fastapi_*.py verbatim (the examples themselves
  run in tests/integrations/test_integ_examples.py).
* No file of the project cites the design notes it was written from: the docs
  stand alone (docs/architecture.md states the contract).
* ``mkdocs build --strict`` succeeds, and the built HTML has the site title,
  the navigation to every page, the API reference generated from the
  docstrings, and a search index (checked with the standard library's parser).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PROGRAM_PAGES = ["integrations.md"]
_EXAMPLE_BLOCK = re.compile(r"<!-- example: (?P<path>\S+) -->\n```python\n(?P<code>.*?)```", re.S)


def _programs() -> list[object]:
    params: list[object] = []
    for page in PROGRAM_PAGES:
        blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
        params += [pytest.param(code, id=f"{page}-block{i}") for i, code in enumerate(blocks)]
    return params


def test_the_integrations_guide_has_runnable_programs() -> None:
    assert len(_programs()) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("code", _programs())
def test_program_runs(code: str, tmp_path: Path) -> None:
    assert "asyncio.run(main())" in code
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_the_fastapi_page_shows_the_examples_verbatim() -> None:
    page = (DOCS / "fastapi.md").read_text()
    shown = {m["path"]: m["code"] for m in _EXAMPLE_BLOCK.finditer(page)}
    expected = sorted(f"examples/{p.name}" for p in (ROOT / "examples").glob("fastapi_*.py"))
    assert sorted(shown) == expected
    for path in expected:
        assert shown[path] == (ROOT / path).read_text(), f"docs/fastapi.md shows an old {path}"


def test_the_install_page_lists_every_extra() -> None:
    """docs/install.md's table of extras is pyproject.toml's (the user-facing ones), and its
    `all` row installs what the table lists."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    documented = re.findall(r"^\| `(\w+)` \|", (DOCS / "install.md").read_text(), re.M)
    assert sorted(documented) == sorted(set(extras) - {"test", "bench"})
    readme = (ROOT / "README.md").read_text()
    for listing in (
        readme.split("(also: ")[1].split(")")[0],
        readme.split("# with extras (")[1].split(")")[0],
    ):
        listed = set(re.findall(r"\w+", listing.replace("#", " ")))
        assert listed >= set(documented) - {"asyncpg"}, f"README's extras: {listing}"
    (all_extras,) = extras["all"]
    assert sorted(all_extras.split("[")[1].rstrip("]").split(",")) == sorted(
        set(documented) - {"all"}
    )


def test_the_wall_clock_is_read_only_where_architecture_md_says() -> None:
    """docs/architecture.md, "Time": everything runs on the loop's clock except the reads it
    lists (an HTTP-date's conversion, a Redis limiter's clock="client", a span's timestamps);
    and the layout it shows names modules and packages that exist."""
    reads = {
        str(path.relative_to(ROOT / "src" / "aiolease"))
        for path in (ROOT / "src" / "aiolease").rglob("*.py")
        if re.search(r"\btime\.time(_ns)?\(|datetime\.now\(", path.read_text())
    }
    assert reads == {"_http.py", "redis/_rate.py", "redis/_concurrency.py", "otel.py"}
    page = (DOCS / "architecture.md").read_text()
    layout = page.split("src/aiolease/\n")[1].split("```")[0]
    for entry in re.findall(r"^  (\S.*?)\s{2,}", layout, re.M):
        for name in entry.split():
            assert (ROOT / "src" / "aiolease" / name).exists(), f"architecture.md lists {name}"


def test_no_file_cites_the_design_notes() -> None:
    skip = {".git", ".venv", "site", "build", "dist", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
    pattern = re.compile(r"DESIGN\.md|\.\./shared")
    offenders = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        for name in filenames:
            path = Path(dirpath, name)
            if path.suffix not in {".py", ".md", ".toml", ".yml", ".yaml", ".txt", ".cfg", ""}:
                continue
            if path == Path(__file__).resolve():
                continue
            try:
                text = path.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            if pattern.search(text):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


class _Page(HTMLParser):
    """What a built page shows: its title, the links in its navigation, its headings."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.nav_links: set[str] = set()
        self.text: list[str] = []
        self._in_title = False
        self._nav_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag == "nav":
            self._nav_depth += 1
        if tag == "a" and self._nav_depth:
            href = dict(attrs).get("href")
            if href:
                self.nav_links.add(href)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag == "nav" and self._nav_depth:
            self._nav_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.slow
def test_the_site_builds_strictly_with_navigation_to_every_page(site: Path) -> None:
    home = _parse(site / "index.html")
    assert home.title.strip().endswith("aiolease")
    pages = [
        "pool",
        "transactions",
        "limits",
        "redis",
        "integrations",
        "fastapi",
        "testing",
        "choosing",
        "architecture",
        "benchmarks",
        "install",
        "reference/aiolease",
        "reference/http",
        "reference/testing",
    ]
    for name in pages:
        assert (site / name / "index.html").is_file(), name
        assert any(link.rstrip("/").endswith(name) for link in home.nav_links), name


@pytest.mark.slow
def test_the_api_reference_comes_from_the_docstrings(site: Path) -> None:
    http = " ".join(_parse(site / "reference" / "http" / "index.html").text)
    for name in ("LimitedTransport", "limited", "RateLimitMiddleware", "client_ip"):
        assert name in http, name
    # A sentence of a docstring, not of the page's own text:
    assert "answers 429 to requests over a limit" in http
    core = " ".join(_parse(site / "reference" / "aiolease" / "index.html").text)
    for name in ("Pool", "RateLimiter", "ConcurrencyLimiter", "LimitGroup", "atomic"):
        assert name in core, name


@pytest.mark.slow
def test_the_benchmarks_page_includes_the_benchmark_history(site: Path) -> None:
    page = " ".join(_parse(site / "benchmarks" / "index.html").text)
    first_heading = (ROOT / "bench" / "README.md").read_text().splitlines()[0].lstrip("# ")
    assert first_heading in page
    assert "2026-12-05" in page


@pytest.mark.slow
def test_the_site_has_a_search_index(site: Path) -> None:
    index = json.loads((site / "search" / "search_index.json").read_text())
    locations = {doc["location"] for doc in index["docs"]}
    assert any(loc.startswith("integrations/") for loc in locations)
    assert any(
        "LimitedTransport" in doc["text"] or "LimitedTransport" in doc["title"]
        for doc in index["docs"]
    )
