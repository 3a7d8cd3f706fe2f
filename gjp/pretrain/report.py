"""``report.html`` of a run: its training curves as inline SVG, one small chart per
quantity, in a page that needs nothing but a browser."""

from __future__ import annotations

import html
import math

from gjp import __version__

WIDTH, HEIGHT, PAD = 460, 150, 34


def _chart(rows: list[dict], x: str, key: str) -> str:
    points = [(r[x], r[key]) for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def sx(v):
        return PAD + (v - x0) / (x1 - x0) * (WIDTH - 2 * PAD)

    def sy(v):
        return HEIGHT - PAD + (v - y0) / (y1 - y0) * (2 * PAD - HEIGHT)

    line = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in points)
    dots = "" if len(points) > 60 else "".join(f"<circle cx='{sx(a):.1f}' cy='{sy(b):.1f}' r='2'/>" for a, b in points)
    return (f"<figure><figcaption>{html.escape(key)}</figcaption>"
            f"<svg viewBox='0 0 {WIDTH} {HEIGHT}' width='{WIDTH}' height='{HEIGHT}' xmlns='http://www.w3.org/2000/svg'>"
            f"<rect x='{PAD}' y='{PAD / 2}' width='{WIDTH - 2 * PAD}' height='{HEIGHT - 1.5 * PAD}' fill='#fafafa' "
            "stroke='#ddd'/>"
            f"<polyline points='{line}' fill='none' stroke='#1f77b4' stroke-width='1.5'/>{dots}"
            f"<text x='{PAD}' y='{HEIGHT - 8}' font-size='10'>{html.escape(x)} {x0:g}</text>"
            f"<text x='{WIDTH - PAD}' y='{HEIGHT - 8}' font-size='10' text-anchor='end'>{x1:g}</text>"
            f"<text x='2' y='{sy(y1) + 4:.1f}' font-size='10'>{y1:.3g}</text>"
            f"<text x='2' y='{sy(y0):.1f}' font-size='10'>{y0:.3g}</text></svg></figure>")


def report_html(title: str, rows: list[dict], x: str, keys: list[str], summary: dict) -> str:
    """The page: the summary's numbers, then one chart per key present in ``rows``."""
    charts = "".join(_chart(rows, x, k) for k in keys)
    facts = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{v:.4g}</td></tr>" if isinstance(v, float)
                    else f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                    for k, v in summary.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:6px}"
            "figcaption{font-size:13px;font-weight:bold}td{padding:1px 8px;font-size:13px}</style></head><body>"
            f"<h2>{html.escape(title)}</h2><table>{facts}</table><div>{charts}</div>"
            f"<p style='color:#888'>gjp {__version__}</p></body></html>")
