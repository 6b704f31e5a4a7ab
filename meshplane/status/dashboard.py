"""The dashboard: one self-contained HTML page (dashboard.html beside this module) served at `/`.

The page has no external assets and no build step; its script reads `/status` and the newest
generations of `/changes` and redraws itself every few seconds, so this module only serves the file.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def dashboard_html() -> str:
    return resources.files("meshplane.status").joinpath("dashboard.html").read_text(encoding="utf-8")
