"""An evaluation report a person would rather look at than read: HTML, Markdown, JSON, plots and image grids.

:func:`write_report` turns a nested ``results`` dict (headline ``summary``, ``protocol``, ``sets``, the
four evaluation ``tiers`` and free-text ``notes``; any other key is rendered generically) into::

    out_dir/report.json    the results as given, plus {"files": {...}} (relative paths)
    out_dir/report.html    one self-contained page: inline CSS, no JavaScript, no network
    out_dir/report.md      the same tables as pipe tables, for GitHub / the Hub
    out_dir/plots/*.png    a bar chart per tier (>= 2 numeric metrics) and a line plot per curve
    out_dir/grids/*.png    "real beside generated" contact sheets (:func:`render_grid`)

Rendering is generic: metric names are never hard-coded. Within a tier each sub-dict becomes a table
(nested dicts are flattened to ``parent.child`` rows); sub-dicts that share most metric names (e.g. the
same metrics from two feature extractors) are merged into one table with a column per sub-dict.
Numbers get 4 significant digits, keys containing ``%`` or ``percent`` are shown as percentages (the
value is taken to be a percentage already, not a fraction), lists longer than 10 are summarised and
missing / ``None`` / NaN values are shown as an em dash.

Bar charts are drawn as small multiples (one panel per metric, one coloured bar per sub-dict), so
metrics on very different scales (FID ~ 10, KID ~ 0.01) stay readable; a ``<name>_mean`` metric with a
``<name>_std`` sibling is drawn with an error bar. Plotting needs matplotlib (imported lazily, Agg
canvas, no pyplot state); without it the report is written without plots and a warning is logged.

Every file is written atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import datetime
import html
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..io_utils import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["ImageGrid", "MAX_TILES_PER_ROW", "ROW_LABEL_HEIGHT", "render_grid", "write_report"]

#: At most this many tiles are drawn per row of a contact sheet.
MAX_TILES_PER_ROW = 8
#: Height (pixels) of the label band drawn above each row of a contact sheet.
ROW_LABEL_HEIGHT = 18

DEFAULT_TITLE = "UniPath evaluation"
MISSING = "\u2014"  # em dash

_MAX_LIST_ITEMS = 10
_MAX_TEXT_CHARS = 300
_MAX_FLATTEN_DEPTH = 4
_MAX_CHART_PANELS = 40
_MAX_CURVE_TABLE_ROWS = 25
_KNOWN_KEYS = ("title", "summary", "protocol", "sets", "tiers", "notes", "files")


# --------------------------------------------------------------------------------------------------
# Image grids
# --------------------------------------------------------------------------------------------------


@dataclass
class ImageGrid:
    """Real and generated images for one prompt / condition, shown as a two-row contact sheet."""

    title: str  #: e.g. the prompt
    real: List[Image.Image] = field(default_factory=list)  #: may be empty
    generated: List[Image.Image] = field(default_factory=list)  #: may be empty
    caption: str = ""  #: e.g. the label, the prototypes used


def _as_pil(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image or an HWC / HW array (uint8, or float in [0, 1])."""
    if isinstance(image, Image.Image):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            image = np.asarray(image)
        else:
            if "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        finite = array[np.isfinite(array)]
        high = float(finite.max()) if finite.size else 1.0
        scale = 255.0 if high <= 1.0 else (255.0 / high if high > 255.0 else 1.0)
        array = np.clip(np.nan_to_num(array) * scale, 0, 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")


def _fit_tile(image: Any, tile: int) -> Image.Image:
    """`image` resized to ``tile x tile``, keeping the aspect ratio by a centre crop."""
    return ImageOps.fit(_as_pil(image), (tile, tile), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def render_grid(grid: ImageGrid, path: str, tile: int = 128) -> str:
    """Writes a PNG contact sheet for `grid` to `path` and returns `path`.

    One row "real" and one row "generated", each under a label band of :data:`ROW_LABEL_HEIGHT`
    pixels (PIL's default font). Tiles are ``tile x tile`` pixels (aspect kept by a centre crop), at
    most :data:`MAX_TILES_PER_ROW` per row, without gaps, so the sheet is ``tile * columns`` pixels
    wide, where ``columns`` is the longer row. An empty row is left out; if both are empty, a single
    "no images" placeholder row is drawn.
    """
    if tile < 1:
        raise ValueError(f"tile must be a positive number of pixels, got {tile}")
    rows: List[Tuple[str, List[Any]]] = []
    for name, images in (("real", list(grid.real or [])), ("generated", list(grid.generated or []))):
        if not images:
            continue
        shown = images[:MAX_TILES_PER_ROW]
        label = f"{name} ({len(images)})" if len(shown) == len(images) else f"{name} ({len(shown)} of {len(images)})"
        rows.append((label, shown))
    if not rows:
        rows.append(("no images", []))
    columns = max(1, max(len(images) for _, images in rows))
    row_height = ROW_LABEL_HEIGHT + tile
    sheet = Image.new("RGB", (tile * columns, row_height * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, (label, images) in enumerate(rows):
        top = r * row_height
        draw.rectangle([0, top, sheet.width - 1, top + ROW_LABEL_HEIGHT - 1], fill=(238, 240, 243))
        box = draw.textbbox((0, 0), label, font=font)
        text_y = top + max(0, (ROW_LABEL_HEIGHT - (box[3] - box[1])) // 2 - box[1])
        draw.text((4, text_y), label, fill=(31, 35, 40), font=font)
        for c, image in enumerate(images):
            sheet.paste(_fit_tile(image, tile), (c * tile, top + ROW_LABEL_HEIGHT))
            if c and tile >= 16:  # a 1-pixel white line between tiles (drawn over them: the size stays tile * n)
                draw.line([(c * tile, top + ROW_LABEL_HEIGHT), (c * tile, top + row_height - 1)], fill=(255, 255, 255))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    logger.debug("wrote image grid %s (%dx%d)", path, sheet.width, sheet.height)
    return path


# --------------------------------------------------------------------------------------------------
# Value formatting
# --------------------------------------------------------------------------------------------------


def _is_percent_key(key: str) -> bool:
    return "%" in key or "percent" in key.lower()


def _is_real_number(value: Any) -> bool:
    """True for ints and floats (Python or numpy), not bools."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_finite_number(value: Any) -> bool:
    return _is_real_number(value) and math.isfinite(float(value))


def _format_number(value: Any, percent: bool = False) -> str:
    """4 significant digits; thousands separators for large values; ``%`` appended if `percent`."""
    if isinstance(value, (int, np.integer)):
        text = f"{int(value):,}" if abs(int(value)) >= 10_000 else str(int(value))
    else:
        number = float(value)
        if math.isnan(number):
            return MISSING
        if math.isinf(number):
            return "\u221e" if number > 0 else "\u2212\u221e"
        if number == 0:
            text = "0"
        elif 1e4 <= abs(number) < 1e15:
            text = f"{number:,.0f}"
        else:
            text = f"{number:.4g}"
    return text + "%" if percent else text


def _truncate(text: str, limit: int = _MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _format_value(value: Any, key: str = "") -> str:
    """Human-readable text for one value (escaping is left to the writers)."""
    if value is None:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if _is_real_number(value):
        return _format_number(value, _is_percent_key(key))
    if isinstance(value, str):
        return _truncate(value) if value else MISSING
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _format_value(value.item(), key)
        if value.size > _MAX_LIST_ITEMS:
            shape = "x".join(str(s) for s in value.shape)
            return f"[...] {value.size} items" + (f" ({shape})" if value.ndim > 1 else "")
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) > _MAX_LIST_ITEMS:
            return f"[...] {len(value)} items"
        return _truncate("[" + ", ".join(_format_value(v, key) for v in value) + "]")
    if isinstance(value, Mapping):
        if len(value) > _MAX_LIST_ITEMS:
            return f"{{...}} {len(value)} items"
        inner = ", ".join(f"{k}: {_format_value(v, str(k))}" for k, v in value.items())
        return _truncate("{" + inner + "}")
    return _truncate(str(value))


def _flatten(mapping: Mapping, prefix: str = "", depth: int = 0) -> List[Tuple[str, Any]]:
    """``(key, value)`` rows; nested mappings become ``parent.child`` keys (up to a depth)."""
    rows: List[Tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and depth < _MAX_FLATTEN_DEPTH:
            rows.extend(_flatten(value, name + ".", depth + 1))
        else:
            rows.append((name, value))
    return rows


def _jsonable(value: Any) -> Any:
    """A strict-JSON copy: numpy values become Python ones, NaN / infinity become ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")[:limit].strip("_")
    return slug or "item"


# --------------------------------------------------------------------------------------------------
# Document model: sections of blocks, written out as HTML and as Markdown
# --------------------------------------------------------------------------------------------------


@dataclass
class _Cell:
    text: str
    numeric: bool = False


@dataclass
class _Table:
    headers: List[str]
    rows: List[List[_Cell]]
    css: str = ""


@dataclass
class _Heading:
    text: str


@dataclass
class _Para:
    text: str
    css: str = ""


@dataclass
class _Figure:
    src: str  # relative to the report, "/"-separated
    alt: str
    caption: str = ""


@dataclass
class _Bullets:
    items: List[str]


@dataclass
class _Section:
    title: str
    anchor: str
    blocks: List[Any] = field(default_factory=list)


@dataclass
class _DataTable:
    """One metric table of a tier: rows of raw values, one column (series) per sub-dict."""

    heading: str  # shown above the table ("" for none)
    series: List[str]  # chart series / column names
    headers: List[str]  # display column headers, "metric" first
    rows: List[Tuple[str, List[Any]]]

    def to_table(self) -> _Table:
        cells = []
        for key, values in self.rows:
            row = [_Cell(key)]
            row += [_Cell(_format_value(v, key), _is_real_number(v) or v is None) for v in values]
            cells.append(row)
        return _Table(list(self.headers), cells)


def _kv_table(mapping: Mapping, key_header: str = "metric", value_header: str = "value", css: str = "") -> _Table:
    rows = [[_Cell(key), _Cell(_format_value(v, key), _is_real_number(v))] for key, v in _flatten(mapping)]
    return _Table([key_header, value_header], rows, css)


def _group_subdicts(subs: List[Tuple[str, List[Tuple[str, Any]]]]) -> List[List[int]]:
    """Indices of sub-dicts grouped by shared metric names (at least half of the smaller key set)."""
    groups: List[Tuple[List[int], List[str]]] = []
    for index, (_, rows) in enumerate(subs):
        keys = [k for k, _ in rows]
        for members, union in groups:
            shared = len(set(keys) & set(union))
            smaller = min(len(set(keys)), len(set(union)))
            if smaller and shared >= min(2, smaller) and shared * 2 >= smaller:
                members.append(index)
                union.extend(k for k in keys if k not in union)
                break
        else:
            groups.append(([index], list(dict.fromkeys(keys))))
    return [members for members, _ in groups]


def _tier_tables(tier: Mapping) -> List[_DataTable]:
    """The metric tables of one tier (scalars first, then sub-dicts, combined where they share metrics)."""
    scalars = [(str(k), v) for k, v in tier.items() if not isinstance(v, Mapping)]
    subs = [(str(k), _flatten(v)) for k, v in tier.items() if isinstance(v, Mapping)]
    tables: List[_DataTable] = []
    if scalars:
        tables.append(_DataTable("", ["overall"], ["metric", "value"], [(k, [v]) for k, v in scalars]))
    for members in _group_subdicts(subs):
        if len(members) == 1:
            name, rows = subs[members[0]]
            tables.append(_DataTable(name, [name], ["metric", "value"], [(k, [v]) for k, v in rows]))
            continue
        names = [subs[i][0] for i in members]
        lookups = [dict(subs[i][1]) for i in members]
        keys = list(dict.fromkeys(k for i in members for k, _ in subs[i][1]))
        rows = [(k, [lookup.get(k) for lookup in lookups]) for k in keys]
        tables.append(_DataTable(" / ".join(names), names, ["metric"] + names, rows))
    return tables


def _count_numeric(tables: Sequence[_DataTable]) -> int:
    return sum(_is_finite_number(v) for t in tables for _, values in t.rows for v in values)


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib, imported lazily; an explicit Agg canvas and no pyplot, so no global state)
# --------------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure, path: str) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, facecolor="white")


def _series_colours(names: Iterable[str]) -> Dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    colours: Dict[str, Any] = {}
    for name in names:
        if name not in colours:
            colours[name] = palette[len(colours) % len(palette)]
    return colours


def _tier_chart(title: str, tables: Sequence[_DataTable], path: str) -> bool:
    """Small multiples: one panel per numeric metric, one bar per sub-dict. False if nothing to draw."""
    panels: List[Tuple[str, str, List[Tuple[str, Optional[float], Optional[float]]]]] = []
    for table in tables:
        lookup = dict(table.rows)
        for key, values in table.rows:
            if key.endswith("_std") and key[: -len("_std")] + "_mean" in lookup:
                continue  # drawn as the error bar of the matching _mean panel
            errors = lookup.get(key[: -len("_mean")] + "_std") if key.endswith("_mean") else None
            bars: List[Tuple[str, Optional[float], Optional[float]]] = []
            for i, (series, value) in enumerate(zip(table.series, values)):
                number = float(value) if _is_finite_number(value) else None
                error = errors[i] if errors is not None and number is not None and _is_finite_number(errors[i]) else None
                bars.append((series, number, None if error is None else abs(float(error))))
            if any(number is not None for _, number, _ in bars):
                panels.append((key, table.heading, bars))
    if not panels:
        return False
    if len(panels) > _MAX_CHART_PANELS:
        logger.info("chart for %r shows the first %d of %d metrics", title, _MAX_CHART_PANELS, len(panels))
        panels = panels[:_MAX_CHART_PANELS]
    colours = _series_colours(series for _, _, bars in panels for series, _, _ in bars)
    titles = [key for key, _, _ in panels]
    duplicated = {t for t in titles if titles.count(t) > 1}
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    legend = len(colours) > 1
    figure = _new_figure(2.75 * columns, 2.3 * rows + (0.45 if legend else 0) + 0.4)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (key, heading, bars) in zip(axes, panels):
        names = [s for s, _, _ in bars]
        values = [0.0 if v is None else v for _, v, _ in bars]
        labels = ["n/a" if v is None else _format_number(v, _is_percent_key(key)) for _, v, _ in bars]
        has_errors = any(e is not None for _, _, e in bars)
        container = ax.bar(
            range(len(bars)),
            values,
            color=[colours[s] for s in names],
            yerr=[e or 0.0 for _, _, e in bars] if has_errors else None,
            capsize=3,
            width=0.7,
        )
        ax.bar_label(container, labels=labels, fontsize=7, padding=2)
        ax.set_xticks(range(len(bars)), [_truncate(n, 14) for n in names], fontsize=7, rotation=20 if len(bars) > 2 else 0)
        ax.tick_params(axis="y", labelsize=7)
        pad = max(0.0, (2 - len(bars)) * 0.5)  # a lone bar keeps the width of one of two
        ax.set_xlim(-0.5 - pad, len(bars) - 0.5 + pad)
        tops = [v + (e or 0.0) for v, (_, _, e) in zip(values, bars)]
        high, low = max(tops + [0.0]), min(values + [0.0])
        if high == low == 0.0:
            ax.set_ylim(0.0, 1.0)
        else:
            span = high - low
            ax.set_ylim(low - (0.15 * span if low < 0 else 0.0), high + (0.15 * span if high > 0 else 0.0))
        ax.axhline(0, color="#888888", linewidth=0.6)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        label = f"{heading}: {key}" if key in duplicated and heading else key
        ax.set_title(_truncate(label, 38), fontsize=9)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize=11, fontweight="bold")
    if legend:
        from matplotlib.patches import Patch

        handles = [Patch(color=c, label=n) for n, c in colours.items()]
        figure.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)), fontsize=8, frameon=False)
    _save_figure(figure, path)
    return True


def _curve_series(curve: Mapping) -> Dict[str, List[Any]]:
    series = curve.get("series")
    if isinstance(series, Mapping):
        return {str(k): list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v] for k, v in series.items()}
    if "y" in curve:
        return {str(curve.get("ylabel") or "value"): list(curve["y"])}
    return {}


def _curve_plot(name: str, curve: Mapping, path: str) -> bool:
    """A line plot, one line per series. False if the curve has no data."""
    xs = list(curve.get("x") or [])
    series = _curve_series(curve)
    if not xs or not series:
        return False
    numeric_x = all(_is_finite_number(x) for x in xs)
    positions = [float(x) for x in xs] if numeric_x else list(range(len(xs)))
    colours = _series_colours(series)
    figure = _new_figure(6.4, 3.8)
    ax = figure.subplots()
    for label, ys in series.items():
        n = min(len(positions), len(ys))
        if n < len(positions) or n < len(ys):
            logger.warning("curve %r: series %r has %d values for %d x values", name, label, len(ys), len(positions))
        values = [float(y) if _is_finite_number(y) else float("nan") for y in ys[:n]]
        ax.plot(positions[:n], values, marker="o", markersize=4, linewidth=1.8, label=label, color=colours[label])
    if not numeric_x:
        ax.set_xticks(positions, [_truncate(str(x), 16) for x in xs], fontsize=8)
    ax.set_xlabel(str(curve.get("xlabel") or "x"))
    ax.set_ylabel(str(curve.get("ylabel") or "value"))
    ax.set_title(name, fontsize=11, fontweight="bold")
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=8, frameon=False)
    _save_figure(figure, path)
    return True


def _curve_table(curve: Mapping) -> Optional[_Table]:
    xs = list(curve.get("x") or [])
    series = _curve_series(curve)
    if not xs or not series or len(xs) > _MAX_CURVE_TABLE_ROWS:
        return None
    ylabel = str(curve.get("ylabel") or "")
    headers = [str(curve.get("xlabel") or "x")] + list(series)
    rows = []
    for i, x in enumerate(xs):
        row = [_Cell(_format_value(x), _is_real_number(x))]
        for ys in series.values():
            value = ys[i] if i < len(ys) else None
            row.append(_Cell(_format_value(value, ylabel), True))
        rows.append(row)
    return _Table(headers, rows)


# --------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#fff;color:#1f2328;font:16px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:28px 32px 64px}
h1{font-size:2em;margin:.2em 0 .3em}
h2{margin-top:2.2em;padding-bottom:.25em;border-bottom:1px solid #d0d7de;font-size:1.5em}
h3{margin:1.6em 0 .4em;font-size:1.1em}
a{color:#0969da}
nav.toc{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:8px 16px;font-size:14px}
nav.toc ol{margin:.3em 0;padding-left:1.4em}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:14px;max-width:100%}
th,td{border:1px solid #d0d7de;padding:5px 12px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f6f8fa;font-weight:600}
tbody tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.summary{font-size:17px}
table.summary td{padding:8px 18px}
table.summary td.num{font-size:1.6em;font-weight:650}
figure{margin:1em 0 1.6em}
figure img{max-width:100%;height:auto;border:1px solid #d0d7de;border-radius:4px}
figcaption{color:#57606a;font-size:14px;margin-top:.3em}
p.empty,p.meta,footer{color:#57606a;font-size:14px}
footer{margin-top:3em;border-top:1px solid #d0d7de;padding-top:.6em}
""".strip()


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(table: _Table) -> str:
    css = f' class="{_h(table.css)}"' if table.css else ""
    head = "".join(f"<th>{_h(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = "".join(f'<td class="num">{_h(c.text)}</td>' if c.numeric else f"<td>{_h(c.text)}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    return f"<table{css}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def _html_block(block: Any) -> str:
    if isinstance(block, _Heading):
        return f"<h3>{_h(block.text)}</h3>"
    if isinstance(block, _Para):
        css = f' class="{_h(block.css)}"' if block.css else ""
        return f"<p{css}>{_h(block.text)}</p>"
    if isinstance(block, _Table):
        return _html_table(block)
    if isinstance(block, _Figure):
        caption = f"<figcaption>{_h(block.caption)}</figcaption>" if block.caption else ""
        return f'<figure><img src="{_h(block.src)}" alt="{_h(block.alt)}" loading="lazy">{caption}</figure>'
    if isinstance(block, _Bullets):
        return "<ul>\n" + "\n".join(f"<li>{_h(item)}</li>" for item in block.items) + "\n</ul>"
    raise TypeError(f"unknown block {type(block).__name__}")


def _render_html(title: str, sections: Sequence[_Section], generated_at: str) -> str:
    toc = "".join(f'<li><a href="#{_h(s.anchor)}">{_h(s.title)}</a></li>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(title)}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{_h(title)}</h1>",
    ]
    if len(sections) > 1:
        parts.append(f'<nav class="toc"><strong>Contents</strong><ol>{toc}</ol></nav>')
    for section in sections:
        parts.append(f'<section id="{_h(section.anchor)}">')
        parts.append(f"<h2>{_h(section.title)}</h2>")
        parts.extend(_html_block(block) for block in section.blocks)
        parts.append("</section>")
    parts += [f"<footer>Generated {_h(generated_at)} by unipath_pipeline.evaluation.report</footer>", "</main>", "</body>", "</html>", ""]
    return "\n".join(parts)


_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")
_MD_LONE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def _md(text: Any) -> str:
    """Markdown-safe inline text: HTML characters as entities, emphasis / link / pipe characters escaped."""
    text = html.escape(str(text), quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = _MD_LONE_UNDERSCORE.sub(r"\\_", text)
    text = re.sub(r"^([#>+\-])", r"\\\1", text)
    return text.replace("\r\n", "\n").replace("\n", "<br>")


def _md_table(table: _Table) -> str:
    lines = ["| " + " | ".join(_md(h) for h in table.headers) + " |"]
    aligns = []
    for column in range(len(table.headers)):
        cells = [row[column] for row in table.rows if column < len(row)]
        numeric = column > 0 and cells and all(c.numeric or c.text == MISSING for c in cells)
        aligns.append("---:" if numeric else "---")
    lines.append("| " + " | ".join(aligns) + " |")
    for row in table.rows:
        lines.append("| " + " | ".join(_md(c.text) for c in row) + " |")
    return "\n".join(lines)


def _md_block(block: Any) -> str:
    if isinstance(block, _Heading):
        return f"### {_md(block.text)}"
    if isinstance(block, _Para):
        text = _md(block.text)
        return f"*{text}*" if block.css == "empty" else text
    if isinstance(block, _Table):
        return _md_table(block)
    if isinstance(block, _Figure):
        image = f"![{_md(block.alt)}]({block.src})"
        return image + (f"\n\n*{_md(block.caption)}*" if block.caption else "")
    if isinstance(block, _Bullets):
        return "\n".join(f"- {_md(item)}" for item in block.items)
    raise TypeError(f"unknown block {type(block).__name__}")


def _render_markdown(title: str, sections: Sequence[_Section], generated_at: str) -> str:
    parts = [f"# {_md(title)}"]
    for section in sections:
        parts.append(f"## {_md(section.title)}")
        parts.extend(_md_block(block) for block in section.blocks)
    parts.append(f"*Generated {_md(generated_at)} by unipath\\_pipeline.evaluation.report*")
    return "\n\n".join(parts) + "\n"


def _write_text(text: str, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


class _SectionBuilder:
    def __init__(self) -> None:
        self.sections: List[_Section] = []
        self._anchors: set = set()

    def add(self, title: str) -> _Section:
        anchor = base = "s-" + _slug(title).replace("_", "-")
        n = 2
        while anchor in self._anchors:
            anchor, n = f"{base}-{n}", n + 1
        self._anchors.add(anchor)
        section = _Section(str(title), anchor)
        self.sections.append(section)
        return section


def _generic_blocks(value: Any, key_header: str = "metric", value_header: str = "value") -> List[Any]:
    """Blocks for an arbitrary value: a table for a mapping, bullets for a short list, else a paragraph."""
    if isinstance(value, Mapping):
        return [_kv_table(value, key_header, value_header)] if value else [_Para("No entries.", "empty")]
    if isinstance(value, (list, tuple)) and value and len(value) <= 50 and all(not isinstance(v, Mapping) for v in value):
        return [_Bullets([_format_value(v) for v in value])]
    return [_Para(_format_value(value))]


class _PlotWriter:
    """Draws plots into out_dir/plots, degrading to none (with one warning) without matplotlib."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.paths: List[str] = []
        self.available = True
        self._names: set = set()

    def draw(self, kind: str, name: str, drawer, *args) -> Optional[str]:
        if not self.available:
            return None
        stem = f"{kind}_{len(self._names) + 1:02d}_{_slug(name)}"
        self._names.add(stem)
        relative = f"plots/{stem}.png"
        path = os.path.join(self.out_dir, "plots", f"{stem}.png")
        try:
            drawn = drawer(name, *args, path)
        except ImportError as error:
            self.available = False
            logger.warning("matplotlib is not available (%s): the report is written without plots", error)
            return None
        if not drawn:
            return None
        self.paths.append(path)
        return relative


def write_report(
    out_dir: str,
    results: Mapping[str, Any],
    grids: Sequence[ImageGrid] = (),
    curves: Optional[Mapping[str, Mapping[str, Any]]] = None,
    title: str = DEFAULT_TITLE,
) -> Dict[str, Any]:
    """Writes an evaluation report (JSON, HTML, Markdown, plots, image grids) into `out_dir`.

    Args:
        out_dir: Folder to write into (created if needed). Images go to ``plots/`` and ``grids/``
            inside it and are linked by relative paths, so the folder can be moved or uploaded.
        results: Nested results: optional ``title``, ``summary`` (headline numbers), ``protocol``,
            ``sets`` (one key/value table per set), ``tiers`` (a section per tier, a table per
            sub-dict, combined where sub-dicts share metric names, a bar chart per tier with >= 2
            numeric metrics) and ``notes``; any other key is rendered as its own section.
            It is not modified.
        grids: Real-beside-generated image grids (:func:`render_grid`), one PNG each.
        curves: ``{name: {"x": [...], "series": {label: [...]}, "xlabel": ..., "ylabel": ...}}``,
            a line plot each (plus a data table for up to 25 points).
        title: Page title. ``results["title"]`` is used when this is left at its default.

    Returns:
        ``{"json", "html", "markdown"}`` paths and ``"plots"`` / ``"grids"`` lists of paths, all
        under `out_dir`. ``report.json`` holds ``results`` (as strict JSON: numpy values converted,
        NaN / infinity as ``null``) plus ``"files"`` with the same paths relative to `out_dir`.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a mapping, got {type(results).__name__}")
    os.makedirs(out_dir, exist_ok=True)
    page_title = str(title if title != DEFAULT_TITLE or not results.get("title") else results["title"])
    plots = _PlotWriter(out_dir)
    builder = _SectionBuilder()

    summary = results.get("summary")
    if summary is not None:
        section = builder.add("Summary")
        if isinstance(summary, Mapping):
            section.blocks.append(_kv_table(summary, css="summary") if summary else _Para("No entries.", "empty"))
        else:
            section.blocks.extend(_generic_blocks(summary))

    if results.get("protocol") is not None:
        builder.add("Protocol").blocks.extend(_generic_blocks(results["protocol"], "setting", "value"))

    sets = results.get("sets")
    if sets is not None:
        section = builder.add("Image sets")
        if isinstance(sets, Mapping) and sets and all(isinstance(v, Mapping) for v in sets.values()):
            for name, info in sets.items():
                section.blocks.append(_Heading(str(name)))
                section.blocks.extend(_generic_blocks(info, "property", "value"))
        else:
            section.blocks.extend(_generic_blocks(sets))

    tiers = results.get("tiers")
    if isinstance(tiers, Mapping):
        for tier_name, tier in tiers.items():
            section = builder.add(str(tier_name))
            if not isinstance(tier, Mapping):
                section.blocks.extend(_generic_blocks(tier))
                continue
            if not tier:
                section.blocks.append(_Para("No results.", "empty"))
                continue
            tables = _tier_tables(tier)
            for table in tables:
                if table.heading:
                    section.blocks.append(_Heading(table.heading))
                section.blocks.append(table.to_table())
            if _count_numeric(tables) >= 2:
                src = plots.draw("tier", str(tier_name), _tier_chart, tables)
                if src:
                    section.blocks.append(_Figure(src, f"{tier_name}: bar chart of the numeric metrics"))
    elif tiers is not None:
        builder.add("Tiers").blocks.extend(_generic_blocks(tiers))

    if curves:
        section = builder.add("Curves")
        for name, curve in curves.items():
            section.blocks.append(_Heading(str(name)))
            if not isinstance(curve, Mapping):
                section.blocks.extend(_generic_blocks(curve))
                continue
            src = plots.draw("curve", str(name), _curve_plot, curve)
            if src:
                section.blocks.append(_Figure(src, str(name)))
            table = _curve_table(curve)
            if table is not None:
                section.blocks.append(table)
            elif not src:
                section.blocks.append(_Para("No data.", "empty"))

    grid_paths: List[str] = []
    grid_list = list(grids or ())
    if grid_list:
        section = builder.add("Real beside generated")
        for index, grid in enumerate(grid_list, start=1):
            stem = f"grid_{index:02d}_{_slug(grid.title)}"
            path = render_grid(grid, os.path.join(out_dir, "grids", f"{stem}.png"))
            grid_paths.append(path)
            section.blocks.append(_Heading(grid.title or f"Grid {index}"))
            section.blocks.append(_Figure(f"grids/{stem}.png", grid.title or f"grid {index}", grid.caption))

    for key, value in results.items():
        if key in _KNOWN_KEYS:
            continue
        if isinstance(value, Mapping) and value and any(isinstance(v, Mapping) for v in value.values()):
            section = builder.add(str(key))
            for table in _tier_tables(value):
                if table.heading:
                    section.blocks.append(_Heading(table.heading))
                section.blocks.append(table.to_table())
        else:
            builder.add(str(key)).blocks.extend(_generic_blocks(value))

    notes = results.get("notes")
    if notes:
        items = [notes] if isinstance(notes, str) else list(notes) if isinstance(notes, (list, tuple)) else [notes]
        builder.add("Notes").blocks.append(_Bullets([_format_value(n) if not isinstance(n, str) else n for n in items]))

    generated_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    html_path = os.path.join(out_dir, "report.html")
    md_path = os.path.join(out_dir, "report.md")
    json_path = os.path.join(out_dir, "report.json")
    _write_text(_render_markdown(page_title, builder.sections, generated_at), md_path)
    _write_text(_render_html(page_title, builder.sections, generated_at), html_path)

    def relative(path: str) -> str:
        return os.path.relpath(path, out_dir).replace(os.sep, "/")

    payload = _jsonable({k: v for k, v in results.items() if k != "files"})
    payload["files"] = {
        "json": "report.json",
        "html": "report.html",
        "markdown": "report.md",
        "plots": [relative(p) for p in plots.paths],
        "grids": [relative(p) for p in grid_paths],
    }
    atomic_write_json(payload, json_path)
    logger.info(
        "wrote evaluation report to %s (%d plots, %d grids)", html_path, len(plots.paths), len(grid_paths)
    )
    return {"json": json_path, "html": html_path, "markdown": md_path, "plots": list(plots.paths), "grids": grid_paths}
