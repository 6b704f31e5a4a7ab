"""The Gateway API v1.6.1 standard-channel CustomResourceDefinitions, applied to a test API server.

Owns finding the upstream CRDs (in the shared folder beside the repository's clone, never copied
into the tree) and applying them as upstream wrote them: every file of the standard channel but the
ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1, Kubernetes 1.30+), which is no CRD and
which the 1.20 test API server (tests/k8s/real_apiserver.py) does not serve.

No CRD is edited. The `default: ""` of reference `group` properties is taken as it is: the test
API server is built with the zero-value fix of scripts/kube-apiserver.sh, without which a 1.20
built with a newer Go refuses every empty string ("Invalid value: \"null\""). 1.20 stores but
does not run the CRDs' CEL rules (`x-kubernetes-validations`, 1.25+), so a test on it must not
expect the API server to reject what those rules forbid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio.client import ApiClient

from tests.k8s.real_apiserver import CRDS, REPO, call_ok, wait_established

VERSION = "v1.6.1"
GATEWAY_API = Path(os.environ.get("GATEWAY_API_DIR", REPO.parent / "shared" / "gateway-api"))
STANDARD = GATEWAY_API / VERSION / "crds" / "standard"
VALIDATING_ADMISSION_POLICY = "gateway.networking.k8s.io_vap_safeupgrades.yaml"
GROUP = "gateway.networking.k8s.io"
GATEWAY_API_MISSING = (
    None
    if STANDARD.is_dir()
    else f"the Gateway API {VERSION} CRDs are not at {STANDARD} (the shared folder beside the repository)"
)


def standard_crds() -> list[dict[str, Any]]:
    """Every standard-channel CRD as upstream wrote it, in file-name order."""
    found = []
    for path in sorted(STANDARD.glob("*.yaml")):
        if path.name == VALIDATING_ADMISSION_POLICY:
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                assert document["kind"] == "CustomResourceDefinition", (path, document["kind"])
                found.append(document)
    return found


async def apply_standard_crds(client: ApiClient, deadline: float = 120.0) -> dict[str, dict[str, Any]]:
    """Creates every standard-channel CRD and waits until each is Established; returns them as the
    server holds them, by name."""
    names = []
    for crd in standard_crds():
        created = await call_ok(client, "POST", CRDS, crd)
        names.append(created["metadata"]["name"])
    return await wait_established(client, names, deadline)
