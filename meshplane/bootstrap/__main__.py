"""`python -m meshplane.bootstrap DIRECTORY`: writes every role's default bootstrap into DIRECTORY
under its envoy-configs/ name; `make bootstraps` runs it on envoy-configs/. Defaults only: no flag
and no MESHPLANE_* variable changes what it writes, so the committed files never depend on the
shell that made them."""

from __future__ import annotations

import sys
from pathlib import Path

from meshplane.bootstrap.cli import write_atomically
from meshplane.bootstrap.render import COMMITTED_FILES, BootstrapOptions, render


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m meshplane.bootstrap DIRECTORY (an existing directory)", file=sys.stderr)
        return 2
    for role, name in COMMITTED_FILES.items():
        write_atomically(Path(argv[0]) / name, render(BootstrapOptions(role.value)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
