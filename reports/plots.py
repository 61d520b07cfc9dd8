"""The three pictures of a comparison, drawn with matplotlib's Agg backend into PNG bytes:

- `cosine_plot`: per-position cosine(oracle, candidate) for every gate, positions on the x axis,
  case boundaries marked, flips marked by class;
- `margin_cosine_plot`: oracle margin against cosine, every position of every gate, flips marked,
  the `min_margin` line drawn — a confident flip sits right of the line;
- `matrix_plot`: gates × positions coloured by class, so "int8 and fp16 fail the same position"
  is one column of the same colour.

No pyplot: figures are built directly on an Agg canvas, so nothing global is touched and no display
is needed. Labels from verdicts (gate and case names) go through `visible()` with `$` escaped, so a
name can neither break the layout nor switch on mathtext.
"""

from __future__ import annotations

import io
import math
from typing import Mapping

from .escape import visible
from .model import CLASSES, case_spans, margin_space, num, position_grid

CLASS_COLOURS = {
    "match": "#cfe8cf",
    "tie-flip": "#f2c94c",
    "oracle-artifact": "#5b9bd5",
    "defect": "#d64541",
    "invalid": "#222222",
}
MISSING_COLOUR = "#ffffff"
CLASS_MARKERS = {"tie-flip": "o", "oracle-artifact": "s", "defect": "X", "invalid": "v"}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#393b79")


def _label(s: object) -> str:
    return visible(s).replace("$", r"\$")


def _figure(width: float, height: float, *, left=0.9, right=0.2, bottom=0.8, top=0.45):
    """A figure with fixed margins in inches (tight_layout would draw the figure twice over)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _width(n_positions: int) -> float:
    return min(18.0, max(7.0, 3.0 + 0.12 * n_positions))


def _mark_cases(ax, keys, *, label_y: float | None = None) -> None:
    spans = case_spans(keys)
    for case, lo, hi in spans:
        if lo > 0:
            ax.axvline(lo - 0.5, color="#999999", lw=0.6, ls=":")
    if len(spans) <= 40:
        ax.set_xticks([(lo + hi) / 2 for _, lo, hi in spans])
        ax.set_xticklabels([_label(c)[:18] for c, _, _ in spans], rotation=45, ha="right", fontsize=7)
    else:
        ax.set_xlabel("scored position (all cases, in order)")


def _flip_marker(ax, x, y, cls, flagged: set) -> None:
    ax.plot([x], [y], marker=CLASS_MARKERS[cls], ms=8, ls="none", mfc=CLASS_COLOURS[cls], mec="black",
            mew=0.6, zorder=3, clip_on=False, label=None if cls in flagged else cls)
    flagged.add(cls)


def _pin_invalid(ax, xs: list[float], flagged: set) -> None:
    """Invalid rows have no cosine: mark them on the bottom edge, after the limits are settled."""
    lo = ax.get_ylim()[0]
    for x in xs:
        _flip_marker(ax, x, lo, "invalid", flagged)
    ax.set_ylim(bottom=lo)


def cosine_plot(verdicts: list[Mapping]) -> bytes:
    keys, grid = position_grid(verdicts)
    fig = _figure(_width(len(keys)) + 1.5, 4.4, right=1.7, bottom=1.0)
    ax = fig.add_subplot(1, 1, 1)
    flagged: set = set()
    invalid: list[float] = []
    for i, (v, cells) in enumerate(zip(verdicts, grid)):
        colour = _PALETTE[i % len(_PALETTE)]
        ys = [num(p["cosine"]) if p is not None else None for p in cells]
        ys = [float("nan") if y is None else y for y in ys]
        ax.plot(range(len(keys)), ys, color=colour, lw=1.0, marker=".", ms=3, label=_label(v["gate"]))
        for x, p in enumerate(cells):
            if p is None or p["class"] == "match":
                continue
            if p["class"] == "invalid" or not math.isfinite(ys[x]):
                invalid.append(x)
            else:
                _flip_marker(ax, x, ys[x], p["class"], flagged)
    _pin_invalid(ax, invalid, flagged)
    _mark_cases(ax, keys)
    ax.set_xlim(-0.5, max(len(keys), 1) - 0.5)
    ax.set_ylabel("cosine(oracle, candidate)")
    ax.set_title("Per-position cosine (flips marked; invalid rows on the bottom edge)", fontsize=10)
    ax.grid(True, axis="y", lw=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def margin_cosine_plot(verdicts: list[Mapping]) -> bytes:
    fig = _figure(8.5, 4.8, right=1.7, bottom=0.6)
    ax = fig.add_subplot(1, 1, 1)
    flagged: set = set()
    invalid: list[float] = []
    for i, v in enumerate(verdicts):
        colour = _PALETTE[i % len(_PALETTE)]
        pts = [(num(p["margin"]), num(p["cosine"])) for p in v["positions"]]
        pts = [(x, y) for x, y in pts if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
        ax.scatter([x for x, _ in pts], [y for _, y in pts], s=10, color=colour, alpha=0.7, label=_label(v["gate"]))
        for p in v["positions"]:
            cls = p["class"]
            x, y = num(p["margin"]), num(p["cosine"])
            if cls == "match" or x is None or not math.isfinite(x):
                continue
            if cls == "invalid" or y is None or not math.isfinite(y):
                invalid.append(x)
            else:
                _flip_marker(ax, x, y, cls, flagged)
    _pin_invalid(ax, invalid, flagged)
    for mm in sorted({num(v["policy"].get("min_margin")) for v in verdicts} - {None}):
        ax.axvline(mm, color="#d64541", lw=0.8, ls="--")
        ax.annotate(f"min_margin {mm:g}", (mm, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=7, color="#d64541")
    spaces = sorted({margin_space(v) for v in verdicts})
    ax.set_xlabel("oracle margin (" + ", ".join(spaces) + " space): right of the line = confident")
    ax.set_ylabel("cosine(oracle, candidate)")
    ax.set_title("Oracle margin vs cosine (flips marked)")
    ax.grid(True, lw=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def matrix_plot(verdicts: list[Mapping]) -> bytes:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    keys, grid = position_grid(verdicts)
    index = {c: i for i, c in enumerate(CLASSES)}
    missing = len(CLASSES)
    cells = [[index[p["class"]] if p is not None else missing for p in row] for row in grid]
    fig = _figure(_width(len(keys)), 1.7 + 0.38 * len(verdicts), left=1.3, bottom=1.05)
    ax = fig.add_subplot(1, 1, 1)
    cmap = ListedColormap([CLASS_COLOURS[c] for c in CLASSES] + [MISSING_COLOUR])
    ax.imshow(cells, cmap=cmap, vmin=-0.5, vmax=missing + 0.5, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(verdicts)))
    ax.set_yticklabels([_label(v["gate"])[:20] for v in verdicts], fontsize=8)
    # Cell borders as two line collections: minor ticks would build one Tick object per position.
    n, m = len(keys), len(verdicts)
    ax.vlines([x - 0.5 for x in range(n + 1)], -0.5, m - 0.5, colors="white", lw=0.6 if n <= 200 else 0.2)
    ax.hlines([y - 0.5 for y in range(m + 1)], -0.5, n - 0.5, colors="white", lw=0.6)
    _mark_cases(ax, keys)
    spans = case_spans(keys)
    for case, lo, _hi in spans:
        if lo > 0:
            ax.axvline(lo - 0.5, color="#333333", lw=1.2 if len(spans) <= 40 else 0.5)
    ax.set_title("Position matrix: gates × scored positions, coloured by class")
    present = sorted({c for row in cells for c in row})
    handles = [Patch(facecolor=(CLASS_COLOURS[CLASSES[c]] if c < missing else MISSING_COLOUR), edgecolor="#666666",
                     label=(CLASSES[c] if c < missing else "not scored")) for c in present]
    fig.legend(handles=handles, fontsize=7, ncol=len(handles), loc="lower center", frameon=False)
    return _png(fig)


PLOTS = {
    "cosine": ("Per-position cosine for every gate", cosine_plot),
    "margin-cosine": ("Oracle margin vs cosine, flips marked", margin_cosine_plot),
    "position-matrix": ("Position matrix: gates × positions by class", matrix_plot),
}


def render_plots(verdicts: list[Mapping]) -> dict[str, bytes]:
    """name -> PNG bytes for every plot in PLOTS."""
    return {name: fn(verdicts) for name, (_title, fn) in PLOTS.items()}
