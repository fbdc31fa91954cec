"""Open a Snakemake HTML report in headless Chromium and check that it renders with its figures.

Snakemake's report (``snakemake --report report.html``) is a single self-contained page: a React
app whose results (figures as ``data:`` URIs, captions, categories) are embedded as JavaScript
variables. Checking the file's text says little about whether a browser shows it, so
:func:`check_report` drives a real browser:

1. a copy of the report gets a small probe script (the original is never modified). After the app
   has started, the probe opens every category in the app's navigation and records which results
   it lists, then shows every image result the way the report's own "view" button does
   (``app.setView({content: "img", ...})``) and waits for the browser to decode it
   (``img.complete`` and ``naturalWidth > 0``); HTML results are shown in the app's iframe. It
   writes what it saw as JSON into the page, and shows the first figure last;
2. Chromium runs headless (``--headless --no-sandbox --disable-gpu
   --disable-background-networking ...``) once with ``--dump-dom`` to read that JSON back and once
   with ``--screenshot`` for a picture of the rendered page, which must not be blank.

The check passes when the app started, no script error was raised, every expected result is
listed and every image result was decoded with a non-zero size.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome", "chrome")
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--mute-audio",
)
"""Flags for headless Chromium on closed machines (no sandbox as root, no network services)."""

PROBE_ID = "aqnet-render-check"

_ERROR_HOOK = """<script>
window.__aqnetErrors = [];
window.addEventListener("error", function (ev) {
  window.__aqnetErrors.push(String(ev.message || ev.type) + " @ " + String(ev.filename || "")
    + ":" + String(ev.lineno || ""));
}, true);
</script>"""

_PROBE = """<script>
(async function () {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const out = {app: false, workflow_description: false, listed: {}, figures: [], html: [],
               errors: []};
  try {
    for (let i = 0; i < 200 && typeof app === "undefined"; i++) { await sleep(50); }
    out.app = typeof app !== "undefined" && typeof results !== "undefined";
    if (out.app) {
      await sleep(300);
      out.workflow_description = document.body.innerText.length > 0
        && typeof workflow_desc !== "undefined" && workflow_desc.length > 0;
      const cells = () => Array.from(document.querySelectorAll("table td"))
        .map((td) => td.innerText.trim());
      for (const cat of Object.keys(categories)) {
        for (const sub of Object.keys(categories[cat])) {
          app.setView({navbarMode: "menu"});  // back to the menu, as a reader would go
          await sleep(100);
          app.showCategory(cat);
          await sleep(100);
          if (app.state.navbarMode !== "subcategory" || app.state.subcategory !== sub) {
            app.setView({navbarMode: "subcategory", category: cat, subcategory: sub});
            await sleep(100);
          }
          const shown = cells();
          for (const path of categories[cat][sub]) {
            out.listed[path] = shown.some((c) => c === path || c.endsWith(results[path].name));
          }
        }
      }
      let first = null;
      for (const [path, res] of Object.entries(results)) {
        const mime = String(res.mime_type || "");
        if (mime.startsWith("image/")) {
          app.setView({content: "img", contentPath: res.data_uri, resultPath: path});
          let img = null;
          for (let i = 0; i < 100; i++) {
            await sleep(50);
            img = Array.from(document.querySelectorAll("img"))
              .find((el) => el.src === res.data_uri);
            if (img && img.complete && img.naturalWidth > 0) break;
          }
          out.figures.push({path: path, name: res.name, found: !!img,
                            complete: !!(img && img.complete),
                            width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0,
                            shown_width: img ? img.getBoundingClientRect().width : 0});
          if (first === null || res.name === "val_loss.png") first = [path, res];
        } else if (mime === "text/html") {
          app.setView({content: "html", contentPath: res.data_uri, resultPath: path});
          await sleep(200);
          const frame = Array.from(document.querySelectorAll("iframe"))
            .find((el) => el.src === res.data_uri);
          out.html.push({path: path, name: res.name, found: !!frame,
                         bytes: String(res.data_uri || "").length});
        }
      }
      if (first !== null) {
        app.setView({content: "img", contentPath: first[1].data_uri, resultPath: first[0]});
        await sleep(300);
      }
    }
  } catch (err) {
    out.errors.push("probe: " + String(err));
  }
  out.errors = out.errors.concat(window.__aqnetErrors || []);
  const pre = document.createElement("pre");
  pre.id = "%(probe_id)s";
  pre.style.display = "none";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>""".replace("%(probe_id)s", PROBE_ID)


class RenderCheckError(RuntimeError):
    """The browser could not be run or the report did not render; the message says why."""


@dataclass
class RenderResult:
    """What the browser showed."""

    report: str
    browser: str
    app: bool
    workflow_description: bool
    listed: dict[str, bool]
    figures: list[dict[str, Any]]
    html: list[dict[str, Any]]
    errors: list[str]
    screenshot: str | None = None
    screenshot_std: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        """One line: what rendered, or the first problems."""
        if self.ok:
            sizes = ", ".join(f"{f['name']} {f['width']}x{f['height']}" for f in self.figures)
            return (
                f"{len(self.figures)} figure(s) rendered ({sizes}); {len(self.listed)} result(s) "
                f"listed in their categories; {len(self.html)} HTML result(s) shown"
            )
        return "; ".join(self.problems[:5])


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium executable: ``explicit``, ``$CHROMIUM``, or the first of
    :data:`CHROMIUM_NAMES` on the PATH; ``None`` when there is none."""
    for candidate in (explicit, os.environ.get("CHROMIUM"), *CHROMIUM_NAMES):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def _probe_copy(report: Path, folder: Path) -> Path:
    text = report.read_text(encoding="utf-8")
    if "</body>" not in text or "<head>" not in text:
        raise RenderCheckError(f"{report}: not an HTML page (no <head> or </body>)")
    text = text.replace("<head>", "<head>" + _ERROR_HOOK, 1)
    head, sep, tail = text.rpartition("</body>")
    probe = folder / "report_probe.html"
    probe.write_text(head + _PROBE + sep + tail, encoding="utf-8")
    return probe


def _run_browser(browser: str, args: Sequence[str], *, timeout_s: float, profile: Path) -> str:
    cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RenderCheckError(
            f"{Path(browser).name} did not finish within {timeout_s:g} s: {' '.join(cmd)}"
        ) from exc
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-5:]
        raise RenderCheckError(
            f"{Path(browser).name} exited with {proc.returncode}: {' | '.join(tail)}"
        )
    return proc.stdout


def _probe_result(dom: str, report: Path) -> dict[str, Any]:
    start = dom.find(f'id="{PROBE_ID}"')
    if start < 0:
        raise RenderCheckError(
            f"{report}: the page did not finish rendering in the browser (the probe wrote no "
            "result; the report's scripts may have failed to load)"
        )
    body_start = dom.index(">", start) + 1
    body_end = dom.index("</pre>", body_start)
    return json.loads(html.unescape(dom[body_start:body_end]))


def _image_std(path: Path) -> float:
    from matplotlib.image import imread

    pixels = imread(path)
    return float(pixels[..., :3].std())


def check_report(
    report: str | Path,
    *,
    expect: Sequence[str] = (),
    chromium: str | None = None,
    screenshot: str | Path | None = None,
    timeout_s: float = 120.0,
    window: tuple[int, int] = (1400, 1000),
) -> RenderResult:
    """Render ``report`` in headless Chromium and check it (module docstring).

    Args:
        report: the HTML report (``snakemake --report``).
        expect: result file names that must be listed (e.g. ``val_loss.png``); image names among
            them must also be decoded by the browser.
        chromium: the browser executable (default: :func:`find_chromium`).
        screenshot: where to write a screenshot of the rendered page (default: a temporary file,
            checked and deleted).
        timeout_s: limit for each browser run.
        window: browser window size in pixels.

    Returns:
        The :class:`RenderResult`; ``ok`` is false with ``problems`` naming what failed.

    Raises:
        RenderCheckError: no browser, a browser that fails or hangs, or a page that never ran its
            scripts.
    """
    report = Path(report).resolve()
    if not report.is_file():
        raise RenderCheckError(f"report not found: {report}")
    browser = find_chromium(chromium)
    if browser is None:
        raise RenderCheckError(
            "no Chromium found (looked for "
            + ", ".join(CHROMIUM_NAMES)
            + "); on Debian: apt-get install -y chromium"
        )
    with tempfile.TemporaryDirectory(prefix="aqnet-render-") as tmp:
        folder = Path(tmp)
        probe = _probe_copy(report, folder)
        url = probe.as_uri()
        size = f"--window-size={window[0]},{window[1]}"
        budget = "--virtual-time-budget=60000"
        dom = _run_browser(
            browser,
            [size, budget, "--dump-dom", url],
            timeout_s=timeout_s,
            profile=folder / "profile-dom",
        )
        seen = _probe_result(dom, report)
        shot = Path(screenshot).resolve() if screenshot else folder / "screenshot.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        _run_browser(
            browser,
            [size, budget, f"--screenshot={shot}", url],
            timeout_s=timeout_s,
            profile=folder / "profile-shot",
        )
        std = _image_std(shot) if shot.is_file() else None

    result = RenderResult(
        report=str(report),
        browser=browser,
        app=bool(seen.get("app")),
        workflow_description=bool(seen.get("workflow_description")),
        listed={str(k): bool(v) for k, v in seen.get("listed", {}).items()},
        figures=list(seen.get("figures", [])),
        html=list(seen.get("html", [])),
        errors=[str(e) for e in seen.get("errors", [])],
        screenshot=str(shot) if screenshot else None,
        screenshot_std=std,
    )
    result.problems = _problems(result, expect)
    return result


def _problems(result: RenderResult, expect: Sequence[str]) -> list[str]:
    problems: list[str] = []
    if not result.app:
        problems.append("the report's app did not start (no `app`/`results` in the page)")
    if not result.workflow_description:
        problems.append("the workflow description is empty")
    problems += [f"script error in the page: {e}" for e in result.errors]
    names_listed = {Path(p).name: ok for p, ok in result.listed.items()}
    for path, ok in result.listed.items():
        if not ok:
            problems.append(f"{path} is not listed when its category is opened")
    figures = {f["name"]: f for f in result.figures}
    for name in expect:
        if name not in names_listed:
            problems.append(f"expected result {name} is not in the report")
        elif (
            name.lower().endswith((".png", ".jpg", ".jpeg", ".svg", ".gif")) and name not in figures
        ):
            problems.append(f"expected figure {name} is not an image result")
    for fig in result.figures:
        if not (fig.get("found") and fig.get("complete") and fig.get("width", 0) > 0):
            problems.append(
                f"figure {fig.get('name')} was not rendered (found {fig.get('found')}, complete "
                f"{fig.get('complete')}, {fig.get('width')}x{fig.get('height')} px)"
            )
    for page in result.html:
        if not page.get("found"):
            problems.append(f"HTML result {page.get('name')} was not shown in the report's frame")
    if result.screenshot_std is None:
        problems.append("the browser wrote no screenshot")
    elif result.screenshot_std < 0.01:
        problems.append(f"the screenshot is blank (pixel std {result.screenshot_std:.4f})")
    return problems
