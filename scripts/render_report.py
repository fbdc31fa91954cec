"""Open a Snakemake HTML report in headless Chromium and check that it renders with its figures.

Usage::

    python scripts/render_report.py results/report.html
    python scripts/render_report.py results/report.html --expect val_loss.png --expect gates.png \\
        --screenshot results/report_screenshot.png --json results/report_render.json

Every image result of the report must be decoded by the browser with a non-zero size, every
result must be listed in its category, the page must raise no script error and its screenshot
must not be blank (see :mod:`aqnet.report.render_check`). Prints one line; exits 0 when the
report renders, 1 when it does not, 2 when no Chromium is available (Debian:
``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aqnet.report.render_check import RenderCheckError, check_report, find_chromium
from aqnet.stage import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the HTML report (snakemake --report)")
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="NAME",
        help="a result file name that must be in the report (repeatable)",
    )
    parser.add_argument("--screenshot", type=Path, default=None, help="PNG of the rendered page")
    parser.add_argument("--json", type=Path, default=None, help="write the full result as JSON")
    parser.add_argument("--chromium", default=None, help="browser executable (default: found)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per browser run")
    args = parser.parse_args(argv)

    if find_chromium(args.chromium) is None:
        print("render_report: SKIP - no Chromium found (apt-get install -y chromium)")
        return 2
    try:
        result = check_report(
            args.report,
            expect=args.expect,
            chromium=args.chromium,
            screenshot=args.screenshot,
            timeout_s=args.timeout,
        )
    except RenderCheckError as exc:
        print(f"render_report: FAIL - {exc}")
        return 1
    if args.json:
        write_json(args.json, result.to_dict())
    print(f"render_report: {'PASS' if result.ok else 'FAIL'} - {result.summary()}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
