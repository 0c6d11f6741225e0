"""Reading what a real headless browser (Debian's `chromium`) showed of a page users look at.

The report example takes the screenshot itself (`examples/report_tab.py --screenshot`), as a user
would; `color_counts` reads which colours it shows, so that a test checks what the page shows,
not only its HTML text.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def color_counts(png: Path, colors: tuple[str, ...]) -> Counter[str]:
    """How many pixels of the screenshot show each of `colors` (`#rrggbb`), exactly."""
    from PIL import Image

    wanted = {tuple(bytes.fromhex(c[1:])): c for c in colors}
    with Image.open(png) as image:
        found = image.convert("RGB").getcolors(maxcolors=1 << 24) or []
    return Counter({wanted[rgb]: n for n, rgb in found if rgb in wanted})
