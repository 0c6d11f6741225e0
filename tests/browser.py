"""Reading what a real headless browser (Debian's `chromium`) showed of a page users look at.

The report example takes the screenshot itself (`examples/report_tab.py --screenshot`), as a user
would; `color_counts` reads which colours it shows, and `rendered` what the browser drew of each
chart, so that a test checks what the page shows, not only its HTML text.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def color_counts(png: Path, colors: tuple[str, ...]) -> Counter[str]:
    """How many pixels of the screenshot show each of `colors` (`#rrggbb`), exactly."""
    from PIL import Image

    wanted = {tuple(bytes.fromhex(c[1:])): c for c in colors}
    with Image.open(png) as image:
        found = image.convert("RGB").getcolors(maxcolors=1 << 24) or []
    return Counter({wanted[rgb]: n for n, rgb in found if rgb in wanted})


# Run in the page after it rendered: what the browser drew of each chart (each line's box and
# length, each mark) and the table's cells, written into the page for `--dump-dom` to print.
_MEASURE = """<script>
const out = {title: document.title, cells: [], charts: {}};
for (const td of document.querySelectorAll('tr.fwe-run td')) out.cells.push(td.textContent);
for (const fig of document.querySelectorAll('figure.fwe-chart')) {
  const lines = [...fig.querySelectorAll('path.fwe-line')].map(p => {
    const box = p.getBBox();
    return {name: p.querySelector('title').textContent, width: box.width, height: box.height,
            length: p.getTotalLength(), why: p.dataset.why || ''};
  });
  const box = sel => [...fig.querySelectorAll(sel)].map(p => {
    const b = p.getBBox();
    return {x: b.x, y: b.y, width: b.width, height: b.height, title: p.querySelector('title').textContent};
  });
  const marks = [...fig.querySelectorAll('g.fwe-mark')].map(g => ({
    value: g.dataset.value, title: g.querySelector('title').textContent,
    label: g.querySelector('text').textContent}));
  out.charts[fig.dataset.metric] = {caption: fig.querySelector('figcaption').textContent,
                                    text: fig.querySelector('svg').textContent, lines, marks,
                                    bands: box('path.fwe-band'), medians: box('path.fwe-median'),
                                    counts: box('rect.fwe-count'),
                                    legend: [...fig.querySelectorAll('.fwe-legend span')].map(s => s.textContent)};
}
const pre = document.createElement('pre');
pre.id = 'fwe-measured';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


def rendered(page: str, tmp: Path) -> dict[str, Any]:
    """What headless Chromium shows of a report tab's HTML `page`: the document's title, the runs
    table's cell texts, and per chart (by metric) its caption, its lines (name, drawn box, length,
    why it stands out), its marks (value, hover title, label), at scale its band, median and
    counts of non-finite values (drawn box and hover title each), and its legend's entries."""
    assert CHROMIUM is not None
    source = tmp / "rendered.html"
    source.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{page}{_MEASURE}</body></html>')
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--dump-dom"]
    flags += [f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=2000"]
    dom = subprocess.run(
        [CHROMIUM, *flags, source.resolve().as_uri()], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    found = re.search(r'<pre id="fwe-measured">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    measured: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return measured
