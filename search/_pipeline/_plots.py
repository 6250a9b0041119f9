"""Plots of ``search score``: layer importance (1 - cosine per layer, three series) and the
tensor-group x type heatmap (measured delta KLD, else 1 - cosine importance).

    write_html(path, layers, heat)  self-contained HTML with inline SVG and hover titles
    write_png(path, layers, heat)   the same two panels through matplotlib; None if not installed

``layers``: rows {layer, layer_cos, attn_cos, ffn_cos}; ``heat``: (title, row names, column
names, values [R, C] with NaN for missing).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

SERIES = (("layer_cos", "layer", "#1f77b4"), ("attn_cos", "attention", "#ff7f0e"),
          ("ffn_cos", "ffn", "#2ca02c"))


def _importance(rows: list[dict], key: str) -> dict[int, float]:
    return {r["layer"]: 1 - abs(r[key]) for r in rows if r.get(key) is not None}


def _bars_svg(rows: list[dict], width: int = 900, height: int = 260) -> str:
    layers = sorted({r["layer"] for r in rows})
    n = max(len(layers), 1)
    top = max([v for k, _, _ in SERIES for v in _importance(rows, k).values()] + [1e-9])
    slot, pad = (width - 60) / n, 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 50}">',
           '<text x="10" y="15" font-size="13">layer importance: 1 - |cos| (higher = more '
           'important)</text>']
    for si, (key, label, color) in enumerate(SERIES):
        vals = _importance(rows, key)
        out.append(f'<rect x="{width - 240 + 80 * si}" y="5" width="10" height="10" '
                   f'fill="{color}"/><text x="{width - 226 + 80 * si}" y="14" '
                   f'font-size="11">{label}</text>')
        for i, il in enumerate(layers):
            if il not in vals:
                continue
            h = (height - pad) * vals[il] / top
            x = 50 + i * slot + si * slot / 3.5
            out.append(f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{slot / 3.8:.1f}" '
                       f'height="{h:.1f}" fill="{color}"><title>layer {il} {label}: 1-|cos| = '
                       f'{vals[il]:.5f}</title></rect>')
    out += [f'<text x="{50 + i * slot + slot / 3:.1f}" y="{height + 14}" font-size="9" '
            f'text-anchor="middle">{il}</text>' for i, il in enumerate(layers)]
    out.append("</svg>")
    return "\n".join(out)


def _color(v: float, lo: float, hi: float) -> str:
    if not math.isfinite(v):
        return "#eeeeee"
    f = 0.0 if hi <= lo else (v - lo) / (hi - lo)
    r, g, b = int(255 * min(1, 2 * f)), int(255 * min(1, 2 * (1 - f))), 60
    return f"#{r:02x}{g:02x}{b:02x}"


def _heat_svg(heat) -> str:
    title, rows, cols, vals = heat
    v = np.asarray(vals, np.float64)
    fin = v[np.isfinite(v)]
    logv = np.log10(np.maximum(v, 1e-9))
    lo, hi = (float(np.log10(max(fin.min(), 1e-9))), float(np.log10(max(fin.max(), 1e-9)))) \
        if fin.size else (0.0, 1.0)
    cw, ch, left = 60, 12, 150
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + cw * len(cols) + 20}" '
           f'height="{40 + ch * len(rows)}">',
           f'<text x="10" y="14" font-size="13">{html.escape(title)} (log colour scale)</text>']
    out += [f'<text x="{left + cw * j + cw / 2}" y="32" font-size="10" text-anchor="middle">'
            f'{html.escape(c)}</text>' for j, c in enumerate(cols)]
    for i, r in enumerate(rows):
        y = 36 + ch * i
        out.append(f'<text x="{left - 4}" y="{y + 10}" font-size="9" text-anchor="end">'
                   f'{html.escape(r)}</text>')
        for j, c in enumerate(cols):
            val = v[i, j]
            col = _color(logv[i, j] if np.isfinite(val) else math.nan, lo, hi)
            out.append(f'<rect x="{left + cw * j}" y="{y}" width="{cw - 1}" height="{ch - 1}" '
                       f'fill="{col}"><title>{html.escape(r)} {html.escape(c)}: {val:.6g}'
                       f'</title></rect>')
    out.append("</svg>")
    return "\n".join(out)


def write_html(path: Path, layers: list[dict], heat) -> Path:
    body = _bars_svg(layers) + "\n<br/>\n" + _heat_svg(heat)
    path.write_text("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>importance "
                    "scores</title></head><body style='font-family:sans-serif'>\n"
                    f"{body}\n</body></html>\n", encoding="utf-8")
    return path


def write_png(path: Path, layers: list[dict], heat) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    title, rows, cols, vals = heat
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 4 + 0.13 * len(rows)),
                                 gridspec_kw={"height_ratios": [1, max(1.5, len(rows) / 25)]})
    for si, (key, label, color) in enumerate(SERIES):
        imp = _importance(layers, key)
        ks = sorted(imp)
        a1.bar(np.array(ks) + (si - 1) * 0.27, [imp[k] for k in ks], 0.27, label=label,
               color=color)
    a1.set(xlabel="layer", ylabel="1 - |cos|", title="layer importance")
    a1.legend()
    v = np.asarray(vals, np.float64)
    im = a2.imshow(np.log10(np.maximum(v, 1e-9)), aspect="auto", cmap="viridis")
    a2.set_xticks(range(len(cols)), cols)
    a2.set_yticks(range(len(rows)), rows, fontsize=5)
    a2.set_title(title + " (log10)")
    fig.colorbar(im, ax=a2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
