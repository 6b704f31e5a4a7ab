"""What `meshplane serve` imports before it knows its flags: nothing an opt-in feature alone needs.

`kubernetes_asyncio` (and its generated models) costs about 0.25 s and 60 MiB of resident memory;
a control plane without `--kubernetes` must not pay for it. Checked in a fresh interpreter, since
this one has imported whatever other tests needed.
"""

from __future__ import annotations

import subprocess
import sys


def test_the_composition_root_imports_no_kubernetes_client() -> None:
    probe = "import sys, meshplane.app; print(sorted(m for m in sys.modules if m.startswith('kubernetes')))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.strip() == "[]"


def test_the_kubernetes_source_imports_its_client_when_it_runs() -> None:
    probe = (
        "import asyncio, sys\n"
        "from meshplane.discovery.kubernetes import load_configuration\n"
        "before = 'kubernetes_asyncio' in sys.modules\n"
        "try:\n"
        "    asyncio.run(load_configuration(service_account=__import__('pathlib').Path('/nonexistent')))\n"
        "except Exception:\n"
        "    pass  # no cluster here: only the import is looked at\n"
        "print(before, 'kubernetes_asyncio' in sys.modules)"
    )
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent/kubeconfig", "HOME": "/nonexistent"}
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True, env=env)
    assert run.stdout.split() == ["False", "True"]


def test_the_composition_root_imports_no_registry_until_the_registry_is_on() -> None:
    """The registry's gRPC service, store and generated API are imported when `--registry-db` is given."""
    probe = (
        "import sys, meshplane.app\n"
        "print(sorted(m for m in sys.modules if m.startswith(('meshplane.registry_api', 'meshplane.api',"
        " 'meshplane.discovery.registry.store', 'sqlite3'))))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.strip() == "[]"
