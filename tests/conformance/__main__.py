"""`python -m tests.conformance [--only NAME] [--profile GATEWAY-HTTP] [--feature F]`: runs the cases
(tests/conformance/runner.py), prints the table and writes the results as JSON."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from tests.conformance.cases import PROFILES, load_cases
from tests.conformance.cluster import DEFAULT_CLASS
from tests.conformance.runner import CORE_FEATURES, Options, run, table, write_results


def all_features() -> frozenset[str]:
    return frozenset(feature for case in load_cases() for feature in case.features)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance", description=__doc__)
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run this test (repeat for more)")
    parser.add_argument("--profile", choices=PROFILES, default="", help="run only the cases of this profile")
    parser.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="FEATURE",
        help=f"claim this feature besides the core ones ({', '.join(sorted(CORE_FEATURES))}); repeat for more",
    )
    parser.add_argument("--all-features", action="store_true", help="claim every feature a case needs")
    parser.add_argument("--gateway-class", default=DEFAULT_CLASS, help="the GatewayClass the manifests name")
    parser.add_argument(
        "--workdir", type=Path, help="logs, bootstraps and the cluster's data (default: a new temp dir)"
    )
    parser.add_argument("--results", type=Path, help="the JSON results file (default: results.json in the workdir)")
    parser.add_argument("--status-deadline", type=float, default=60.0, help="seconds to wait for a status")
    parser.add_argument("--consistency-deadline", type=float, default=30.0, help="seconds for a consistent response")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="meshplane-conformance-"))
    options = Options(
        workdir=workdir,
        gateway_class=args.gateway_class,
        features=CORE_FEATURES | frozenset(args.feature) | (all_features() if args.all_features else frozenset()),
        only=tuple(args.only),
        profile=args.profile,
        status_deadline=args.status_deadline,
        consistency_deadline=args.consistency_deadline,
    )
    results = asyncio.run(run(options))
    print(table(results))
    results_path = args.results or workdir / "results.json"
    write_results(results, results_path)
    print(f"results: {results_path}; logs: {workdir}", file=sys.stderr)
    return 1 if any(r.result == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
