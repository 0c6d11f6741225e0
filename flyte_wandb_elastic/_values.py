"""How a logged value reads outside W&B: non-finite floats named as W&B prints them.

W&B stores a logged NaN or infinity as the JSON-like literals `NaN`, `Infinity` and `-Infinity`.
Every reader of the run files that summarises values (`inspect`, the report tab) shows them so,
and strict JSON output carries them as those strings (JSON has no NaN).
"""

from __future__ import annotations

import math
from typing import Any


def nonfinite_name(value: float) -> str | None:
    """`"NaN"`, `"Infinity"` or `"-Infinity"` for a non-finite float, else `None`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return None


def short(value: Any) -> str:
    """A value in a table cell: a float to 4 significant digits, a non-finite one by its W&B name."""
    if isinstance(value, float):
        return nonfinite_name(value) or f"{value:.4g}"
    return str(value)


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (at any depth) replaced by its W&B name, for strict JSON."""
    if isinstance(value, float):
        return nonfinite_name(value) or value
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
