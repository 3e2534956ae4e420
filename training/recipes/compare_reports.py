#!/usr/bin/env python
"""Side-by-side table of several `unipath evaluate` reports (e.g. the default model, the same architecture
untrained, real against real), as Markdown; optionally written into a model card's "## Evaluation" section.

    python training/recipes/compare_reports.py --report default=runs/eval-default/report.json \
        --report untrained=runs/eval-untrained/report.json --report "real vs real=runs/eval-real/report.json" \
        [--card unipath_pipeline/default_model/README.md]

The card's text between its "## Evaluation" heading and the next "## " heading is replaced (atomically), so the
script can be rerun after a new evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, Dict, List, Optional, Tuple

from unipath_pipeline.io_utils import atomic_path

CONTROL = "4. Fine-grained controllability"


def _number(value: Any, digits: int = 1, suffix: str = "") -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "\u2014"
    return f"{value:.{digits}f}{suffix}"


def report_rows(report: Dict[str, Any]) -> Dict[str, str]:
    """The compared metrics of one report: FID and KID, controllability, paraphrase margin and prototype adherence,
    per feature extractor."""
    tiers = report["tiers"]
    rows: Dict[str, str] = {}
    for name, values in tiers["1. Pixel fidelity"].items():
        if isinstance(values, dict) and "fid" in values:
            rows[f"FID ({name}) \u2193"] = _number(values["fid"])
            rows[f"KID x 1000 ({name}) \u2193"] = _number(1000 * values["kid_mean"], 1) if values.get("kid_mean") is not None else "\u2014"
    for name, values in tiers[CONTROL].items():
        if isinstance(values, dict) and "controllability (% of real)" in values:
            rows[f"controllability, % of real ({name}) \u2191"] = _number(values["controllability (% of real)"], 1, "%")
    for name, values in (tiers[CONTROL].get("paraphrase robustness") or {}).items():
        if isinstance(values, dict) and "paraphrase margin" in values:
            rows[f"paraphrase margin ({name}) \u2191"] = _number(values["paraphrase margin"], 3)
    adherence = tiers[CONTROL].get("prototype adherence") or {}
    if "win_rate" in adherence:
        rows["prototype adherence, win rate vs random prototypes \u2191"] = _number(adherence["win_rate"], 2)
    rows["images compared (real / generated)"] = " / ".join(
        str(info.get("count", "?")) for info in list(report.get("sets", {}).values())[:2]
    )
    return rows


def comparison_markdown(reports: List[Tuple[str, Dict[str, Any]]]) -> str:
    """One row per metric, one column per report (a dash where a report lacks the metric)."""
    per_report = [(label, report_rows(report)) for label, report in reports]
    metrics: List[str] = []
    for _, rows in per_report:
        metrics += [m for m in rows if m not in metrics]
    lines = ["| metric | " + " | ".join(label for label, _ in per_report) + " |",
             "|---|" + "---:|" * len(per_report)]
    lines += [f"| {m} | " + " | ".join(rows.get(m, "\u2014") for _, rows in per_report) + " |" for m in metrics]
    return "\n".join(lines)


def replace_section(text: str, heading: str, body: str) -> str:
    """`text` with the body of the Markdown section `heading` (up to the next heading of the same level) replaced."""
    lines = text.split("\n")
    try:
        start = lines.index(heading)
    except ValueError:
        raise ValueError(f"--card has no line {heading!r}.") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[: start + 1] + ["", body.rstrip("\n"), ""] + lines[end:])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="append", required=True, metavar="LABEL=REPORT_JSON",
                        help="a column: its label and a report.json of `unipath evaluate` (repeat, in column order)")
    parser.add_argument("--card", default=None, help="a model card whose '## Evaluation' section gets the table")
    parser.add_argument("--preamble", default="", help="text put before the table in the card")
    args = parser.parse_args(argv)
    reports = []
    for item in args.report:
        label, sep, path = item.partition("=")
        if not sep or not label.strip() or not path:
            parser.error(f"--report must be LABEL=REPORT_JSON; got {item!r}")
        with open(path, encoding="utf-8") as f:
            reports.append((label.strip(), json.load(f)))
    table = comparison_markdown(reports)
    print(table)
    if args.card:
        with open(args.card, encoding="utf-8") as f:
            text = replace_section(f.read(), "## Evaluation", (args.preamble + "\n\n" if args.preamble else "") + table)
        with atomic_path(args.card) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
        print(f"wrote the table into {args.card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
