#!/usr/bin/env bash
# Builds benchmarks/deltaload (a Delta ADS load client, gcpload's twin) with the Go toolchain and the
# go-control-plane sources that the baseline's build.sh ($GCP_BASELINE_DIR) unpacked into its cache,
# in GOPATH mode as that script does: nothing is downloaded beyond what build.sh fetches.
# Prints the path of the binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
baseline=${GCP_BASELINE_DIR:-$here/../../shared/baselines/go-control-plane}
cache=$("$baseline/build.sh")
out=$cache/bin/deltaload
if [[ -x $out && $out -nt $here/deltaload/main.go ]]; then
  echo "$out"; exit 0
fi
go_version=$(ls "$cache/root/usr/lib" | sed -n 's/^go-\(1\.[0-9]*\)$/\1/p' | sort -V | tail -n1)
export GOROOT=$cache/root/usr/lib/go-$go_version
export PATH=$GOROOT/bin:$PATH GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local GOFLAGS=
export GOPATH=$cache/gopath:$cache/root/usr/share/gocode GOCACHE=$cache/gocache
mkdir -p "$cache/gopath/src/deltaload" && cp "$here/deltaload/main.go" "$cache/gopath/src/deltaload/"
(cd "$cache/gopath/src/deltaload" && go build -o "$out" .) >&2
echo "$out"
