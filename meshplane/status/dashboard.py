"""The dashboard: one self-contained HTML page (dashboard.html beside this module) served at `/`.

The page has no external assets and no build step; its script reads `/status`, the newest
generations of `/changes` and `/topology` (and `/status/devices` for its device lookup), and
redraws itself every few seconds (the tables, the topology graph and the change timeline, both
inline SVG it builds element by element, data as text), so this module only serves the file. It
must not template data into the page.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def dashboard_html() -> str:
    return resources.files("meshplane.status").joinpath("dashboard.html").read_text(encoding="utf-8")
