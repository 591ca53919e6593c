"""``summary.png``: loss and top-1 per epoch, drawn with PIL (no matplotlib needed).

Left panel: train loss and validation loss; right panel: validation top-1 (and the EMA weights' top-1 when the run
keeps an EMA). Read from ``summary.csv``, so the plot of a resumed run shows the whole run.
"""
import csv
import io
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

__all__ = ['plot_summary', 'read_summary']

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
_PANELS = [
    ('loss', [('train_loss', 'train'), ('eval_loss', 'val'), ('eval_ema_loss', 'val (EMA)')]),
    ('top-1 (%)', [('eval_top1', 'val'), ('eval_ema_top1', 'val (EMA)')]),
]


def read_summary(path) -> List[Dict[str, str]]:
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _nice_ticks(lo: float, hi: float, n: int = 5) -> List[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 0.5 and len(ticks) < 12:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _label(v: float) -> str:
    return f'{v:.0f}' if abs(v - round(v)) < 1e-9 and abs(v) >= 1 else f'{v:.3g}'


def _panel(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], title: str,
           series: Sequence[Tuple[str, List[Tuple[int, float]]]], font) -> None:
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 56, x1 - 12, y0 + 28, y1 - 44
    draw.text((left, y0 + 6), title, fill=(0, 0, 0), font=font)
    pts = [p for _, s in series for p in s]
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    if not pts:
        draw.text((left + 10, top + 10), 'no data yet', fill=(120, 120, 120), font=font)
        return
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts if math.isfinite(p[1])] or [0.0]
    xmin, xmax = min(xs), max(xs)
    if xmax == xmin:
        xmin, xmax = xmin - 1, xmax + 1
    yticks = _nice_ticks(min(ys), max(ys))
    ymin, ymax = yticks[0], yticks[-1]
    if ymax == ymin:
        ymax = ymin + 1

    def px(x, y):
        return (left + (x - xmin) / (xmax - xmin) * (right - left),
                bottom - (y - ymin) / (ymax - ymin) * (bottom - top))

    for t in yticks:
        _, yy = px(xmin, t)
        draw.line([left, yy, right, yy], fill=(230, 230, 230))
        draw.line([left - 4, yy, left, yy], fill=(0, 0, 0))
        draw.text((x0 + 4, yy - 6), _label(t), fill=(0, 0, 0), font=font)
    step = max(1, math.ceil((xmax - xmin + 1) / 10))
    for e in range(int(math.ceil(xmin)), int(xmax) + 1, step):
        xx, _ = px(e, ymin)
        draw.line([xx, bottom, xx, bottom + 4], fill=(0, 0, 0))
        draw.text((xx - 4, bottom + 6), str(e), fill=(0, 0, 0), font=font)
    draw.text(((left + right) // 2 - 14, bottom + 22), 'epoch', fill=(0, 0, 0), font=font)
    for i, (name, s) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        line = [px(x, y) for x, y in s if math.isfinite(y)]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        for x, y in line:
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=color)
        ly = top + 6 + 14 * i
        draw.line([right - 110, ly + 6, right - 92, ly + 6], fill=color, width=2)
        draw.text((right - 86, ly), name, fill=(0, 0, 0), font=font)


def plot_summary(summary_csv, png_path=None, size: Tuple[int, int] = (960, 400)) -> bytes:
    """Draw the loss / top-1 curves of ``summary_csv``; write them to ``png_path`` if given. Returns the PNG bytes."""
    rows = read_summary(summary_csv) if Path(summary_csv).exists() else []
    img = Image.new('RGB', size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    w, h = size
    for i, (title, keys) in enumerate(_PANELS):
        series = []
        for key, name in keys:
            s = []
            for r in rows:
                v = r.get(key)
                if v not in (None, ''):
                    try:
                        s.append((int(r['epoch']), float(v)))
                    except ValueError:
                        continue
            if s:
                series.append((name, s))
        _panel(draw, (i * w // 2, 0, (i + 1) * w // 2, h), title, series, font)
    buf = io.BytesIO()
    img.save(buf, format='PNG')
    data = buf.getvalue()
    if png_path is not None:
        from .checkpoint import atomic_write_bytes
        atomic_write_bytes(png_path, data)
    return data
