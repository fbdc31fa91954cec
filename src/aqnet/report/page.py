"""The report's pages: ``summary.md``, the self-contained ``summary.html`` and
``rmse_table.html``.

The summary is a list of blocks (:func:`summary_blocks`), each ``(kind, content)`` with kind
``verdict``, ``h2``, ``p``, ``table`` (a DataFrame) or ``img`` (a figure's file name). The same
blocks are written as markdown (:func:`summary_markdown`, tables by pandas' ``to_markdown``) and
as one HTML page with the figures embedded (:func:`summary_html`, a jinja2 template, tables by
``to_html``). Numbers are shown with 4 significant digits and a missing one as ``n/a``
(:func:`format_cell`), the same in both.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import numpy as np
import pandas as pd

from aqnet.report import figures
from aqnet.report.bias_share import TIE_M

__all__ = [
    "Block",
    "format_cell",
    "html_table",
    "markdown_table",
    "rmse_html",
    "summary_blocks",
    "summary_html",
    "summary_markdown",
]

Block = tuple[str, Any]
"""``(kind, content)`` of one piece of the summary (module docstring)."""

TITLE = "TopoFlow fine-tune report"

CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:0.5em 0 1em}"
    "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:right}"
    "th{background:#eee}.verdict{font-size:1.3em;padding:0.5em;border-radius:4px;color:#fff}"
    ".SUCCESS{background:#2e7d32}.NOT.SIGNIFICANT{background:#ef6c00}"
    ".NO.IMPROVEMENT{background:#757575}"
    ".REGRESSION{background:#c62828}.NOT.ATTRIBUTABLE{background:#6a1b9a}"
    ".INCONCLUSIVE{background:#8d6e63}img{max-width:100%}"
)

_ENV = jinja2.Environment(autoescape=True, keep_trailing_newline=True)

_SUMMARY = _ENV.from_string(
    """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{ title }}</title><style>{{ css }}</style></head>
<body><h1>{{ title }}</h1>
{% for kind, content in blocks -%}
{% if kind == "verdict" -%}
<div class="verdict {{ content.split(" (")[0] }}">Verdict: {{ content }}</div>
{% elif kind == "h2" -%}
<h2>{{ content }}</h2>
{% elif kind == "p" -%}
<p>{{ content }}</p>
{% elif kind == "table" -%}
{{ content }}
{% elif kind == "img" -%}
<figure><img alt="{{ content.name }}" src="data:image/png;base64,{{ content.data }}">\
<figcaption>{{ content.name }}</figcaption></figure>
{% endif -%}
{% endfor -%}
</body></html>
"""
)

_RMSE = _ENV.from_string(
    """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>RMSE per pollutant and lead time</title>\
<style>{{ css }}</style></head>
<body><h2>RMSE per pollutant and lead time ({{ tag }})</h2>
<p>Physical units; change_pct &lt; 0: the fine-tune's error is lower.</p>
{{ table }}
</body></html>
"""
)


def format_cell(value: Any) -> str:
    """A table cell: floats with 4 significant digits (``n/a`` when not finite), else ``str``."""
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    return df.map(format_cell).rename(columns=str)


def markdown_table(df: pd.DataFrame) -> str:
    """``df`` as a markdown (pipe) table, cells as :func:`format_cell` writes them."""
    return _cells(df).to_markdown(index=False, tablefmt="pipe", disable_numparse=True)


def html_table(df: pd.DataFrame) -> markupsafe.Markup:
    """``df`` as an HTML table (escaped), cells as :func:`format_cell` writes them."""
    return markupsafe.Markup(_cells(df).to_html(index=False, border=0, escape=True))


def rmse_html(rmse: pd.DataFrame, tag: str) -> str:
    """The page ``rmse_table.html``: the RMSE table of ``tag`` (physical units)."""
    return _RMSE.render(css=markupsafe.Markup(CSS), tag=tag, table=html_table(rmse))


def bias_share_text(share: Mapping[str, Any]) -> str:
    """The summary's sentence on what the bias can add on the run's terrain (``bias_share`` of
    ``verdict.json``, :func:`aqnet.report.bias_share.config_share`)."""
    return (
        f"What the bias can add on this terrain ({share['direction']}, H_scale "
        f"{share['h_scale_m']:g} m, {share['n_tokens']} tokens; aqnet.report.bias_share): a "
        f"bilinear form of the two tokens' elevations, which a head of the baseline that reads "
        f"its elevation input channel linearly could form, reproduces "
        f"{100 * share['bilinear']:.1f} % of the row-centred bias (the part a softmax sees), "
        f"{100 * share['key_only']:.1f} % with no query elevation at all ('prefer lower keys'); "
        f"{100 * share['new']:.1f} % (the relu's kink) no such head forms. The smaller that "
        f"part, the more a gain over the control rests on the bias learning what the control's "
        f"weights could also learn, only faster.{_lowest_tie_text(share)}"
    )


LOWEST_TIE_SHOWN = 0.05
"""The share of tokens tied at the lowest height from which the summary names the tie."""


def _lowest_tie_text(share: Mapping[str, Any]) -> str:
    """The sentence on the tokens tied at the lowest height (``lowest_tied``), or ``""`` below
    :data:`LOWEST_TIE_SHOWN`."""
    tied = share["lowest_tied"]
    if tied < LOWEST_TIE_SHOWN:
        return ""
    who = (
        "each of them is penalised for attending every token above it"
        if share["direction"] == "uphill"
        else "every token above them is penalised for attending them"
    )
    sea = "; on a coast, the sea" if abs(share["lowest_m"]) <= TIE_M else ""
    return (
        f" {100 * tied:.1f} % of the tokens are tied at the lowest height "
        f"({share['lowest_m']:g} m{sea}): {who}. In a demo trial, taking the sea away (and this "
        f"tie with it) removed most of what the bias cost a trained baseline "
        f"(docs/known_answer.md)."
    )


def summary_blocks(
    result: Mapping[str, Any],
    rmse: pd.DataFrame,
    comparison: pd.DataFrame,
    bands: pd.DataFrame,
    terrain: pd.DataFrame,
    regions: pd.DataFrame,
    gates: list[dict[str, Any]],
    tag: str,
    *,
    breakdown: pd.DataFrame,
) -> list[Block]:
    """The summary as a list of blocks, the verdict first, then the tables and figures.

    Args:
        result: the content of ``verdict.json`` (:func:`aqnet.report.build.build_report`).
        rmse, comparison, bands, terrain, regions, breakdown: the report's tables.
        gates: one row per gate (:func:`aqnet.report.inputs.gate_rows`).
        tag: which variant the tables describe, e.g. ``"variant default"``.
    """
    blocks: list[Block] = []
    test = result["vs_baseline"]
    ctrl = result["vs_control"]
    blocks.append(("verdict", f"{result['verdict']} ({tag})"))
    blocks.append(("p", result["reason"]))
    text = (
        f"Judged on the {result['split']} split: loss {result['eval_loss']:.4f} vs the "
        f"baseline's {result['baseline_eval_loss']:.4f} on the same samples; threshold "
        f"{result['threshold']:.4f} ({result['threshold_source']}). "
    )
    if ctrl is not None:
        text += f"Against the control {result['control']}: {ctrl['description']}. "
    else:
        text += "No control arm was run, so the gain cannot be attributed. "
    text += (
        f"Against the baseline (context): {test['description']}. Block length: "
        f"{test['block_choice']}; autocorrelation of the daily differences at lags 1-4: "
        + ", ".join(f"{a:+.2f}" for a in test["autocorrelation"][1:5])
        + f". Monitoring (validation year): final val_loss {result['final_val_loss']:.4f} at "
        f"step {result['final_step']}; the baseline's recorded val_loss "
        f"{result['baseline_val_loss']:.4f} ({result['baseline_val_loss_source']})."
    )
    blocks.append(("p", text))
    if result.get("bias_share"):
        blocks.append(("p", bias_share_text(result["bias_share"])))
    if not breakdown.empty:
        ref = result["control"] or "baseline"
        blocks.append(("h2", f"By lead time and pollutant ({tag} vs {ref}, {result['split']})"))
        blocks.append(
            (
                "p",
                "Each row a calibrated paired test with its CI; p_holm is Holm-adjusted within "
                "the lead times and within the pollutants. testable is false where the "
                "evaluated days make fewer than 2 blocks: no test was possible there, and its "
                "p = 1 is no evidence either way. RMSE in physical units on the evaluated "
                "split; published_rmse is the study's figure where it gives one.",
            )
        )
        blocks.append(("table", breakdown))
    best = result["best_variant"]
    if len(result["variants"]) > 1:
        blocks.append(("h2", "Variants"))
        blocks.append(("p", f"Best variant: {best['name']} ({best['criterion']}): {best['line']}"))
        blocks.append(("table", comparison))
        blocks.append(("img", figures.FIGURES["variants"]))
    blocks.append(("h2", "Training"))
    blocks.append(("img", figures.FIGURES["val_loss"]))
    blocks.append(("img", figures.FIGURES["alpha"]))
    blocks.append(("h2", f"RMSE per pollutant and lead time ({tag})"))
    blocks.append(("table", rmse))
    blocks.append(("img", figures.FIGURES["rmse"]))
    blocks.append(("h2", f"Where the fine-tune helps ({tag})"))
    blocks.append(("img", figures.FIGURES["error_map"]))
    blocks.append(("table", bands))
    blocks.append(("table", terrain))
    blocks.append(("img", figures.FIGURES["gain_by_elevation"]))
    blocks.append(("p", "Regions with the largest gain:"))
    blocks.append(("table", regions.head(5)))
    blocks.append(("img", figures.FIGURES["gain_by_region"]))
    blocks.append(("img", figures.FIGURES["significance_map"]))
    blocks.append(("h2", "Gates and cost"))
    blocks.append(("table", pd.DataFrame(gates)))
    blocks.append(("p", "GPU-hours per GPU stage: projected by check_budget, and used."))
    blocks.append(("table", pd.DataFrame(result["gpu_hours_by_stage"])))
    blocks.append(("img", figures.FIGURES["gates"]))
    return blocks


def summary_markdown(blocks: Sequence[Block]) -> str:
    """``summary.md``: the blocks as markdown, figures linked by file name."""
    lines = [f"# {TITLE}", ""]
    for kind, content in blocks:
        if kind == "verdict":
            lines += [f"## Verdict: {content}", ""]
        elif kind == "h2":
            lines += [f"## {content}", ""]
        elif kind == "p":
            lines += [str(content), ""]
        elif kind == "table":
            lines += [markdown_table(content), ""]
        elif kind == "img":
            lines += [f"![{Path(content).stem}]({content})", ""]
    return "\n".join(lines)


def summary_html(blocks: Sequence[Block], out_dir: Path) -> str:
    """``summary.html``: the blocks as one page, each figure of ``out_dir`` embedded."""
    shown: list[Block] = []
    for kind, content in blocks:
        if kind == "table":
            shown.append((kind, html_table(content)))
        elif kind == "img":
            data = base64.b64encode((out_dir / content).read_bytes()).decode()
            shown.append((kind, {"name": content, "data": data}))
        else:
            shown.append((kind, str(content)))
    return _SUMMARY.render(title=TITLE, css=markupsafe.Markup(CSS), blocks=shown)
