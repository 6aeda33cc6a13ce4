"""What every metric result shares: a JSON-ready view of its dataclass."""
from __future__ import annotations

import dataclasses


class MetricResult:
    """Mixin for result dataclasses. ``as_dict`` returns every field shown in the repr (the
    per-item arrays are declared ``field(repr=False)`` and left out), with dict keys as
    strings so the result goes straight into JSON."""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for field in dataclasses.fields(self):
            if field.repr:
                value = getattr(self, field.name)
                out[field.name] = {str(k): v for k, v in value.items()} if isinstance(value, dict) else value
        return out
