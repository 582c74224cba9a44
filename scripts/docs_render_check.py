"""Open the built documentation site in headless Chromium and check what it renders.

Usage: ``python scripts/docs_render_check.py [SITE_DIR] [--screenshots DIR]`` after
``make docs`` (SITE_DIR defaults to ``site``). Serves the site over HTTP on a free
port of 127.0.0.1 (the search runs in a web worker, which a file:// page cannot
start), loads pages with ``chromium --headless --dump-dom`` (scripts run, with a
virtual time budget) and checks the rendered DOM: the Material layout (header,
navigation, search box), the page's own content, and syntax-highlighted code.
Needs the ``chromium`` binary (Debian: ``apt-get install chromium``). Not part of
the test suite, which checks the built HTML with a parser (tests/test_site_docs.py).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path

PAGES = {
    "": ["md-header", "md-nav", "md-search", "aiolease documentation"],
    "integrations/": ["LimitedTransport", "RateLimitMiddleware", "highlight"],
    "reference/http/": ["LimitedTransport", "answers 429 to requests over", "doc-signature"],
    "fastapi/": ["create_app", "aiolease_virtual_time"],
    "architecture/": ["Never loses capacity"],
    "benchmarks/": ["bench-clients"],
}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", nargs="?", default="site")
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    handler = functools.partial(_QuietHandler, directory=args.site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    failures = 0
    try:
        for page, needles in PAGES.items():
            dom = subprocess.run(
                [chromium, *flags, "--dump-dom", base + page],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            ).stdout
            missing = [n for n in needles if n not in dom]
            status = "ok" if dom and not missing else f"MISSING {missing}"
            failures += status != "ok"
            print(f"/{page:22} {len(dom):8d} chars of rendered DOM: {status}")
            if args.screenshots is not None:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                shot = args.screenshots / ((page.strip("/").replace("/", "-") or "index") + ".png")
                size = "--window-size=1280,900"
                subprocess.run(
                    [chromium, *flags, size, f"--screenshot={shot}", base + page],
                    capture_output=True,
                    timeout=120,
                    check=False,
                )
    finally:
        server.shutdown()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
