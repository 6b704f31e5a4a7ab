#!/usr/bin/env bash
# Builds one of the benchmarks' Go clients, benchmarks/PROGRAM/main.go (deltaload: a Delta ADS load
# client, gcpload's twin; heartbeatload: open-loop registry Heartbeat calls), with the Go toolchain
# and the go-control-plane and grpc-go sources that the baseline's build.sh ($GCP_BASELINE_DIR)
# unpacked into its cache, in GOPATH mode as that script does: nothing is downloaded beyond what
# build.sh fetches.
# Usage: build_go_client.sh PROGRAM   -> prints the path of the binary
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prog=${1:?usage: build_go_client.sh PROGRAM (a folder of benchmarks/ holding main.go)}
[[ $prog =~ ^[a-z0-9_]+$ && -f $here/$prog/main.go ]] || { echo "build_go_client.sh: no benchmarks/$prog/main.go" >&2; exit 2; }
baseline=${GCP_BASELINE_DIR:-$here/../../shared/baselines/go-control-plane}
cache=$("$baseline/build.sh")
out=$cache/bin/$prog
if [[ -x $out && $out -nt $here/$prog/main.go ]]; then
  echo "$out"; exit 0
fi
go_version=$(ls "$cache/root/usr/lib" | sed -n 's/^go-\(1\.[0-9]*\)$/\1/p' | sort -V | tail -n1)
export GOROOT=$cache/root/usr/lib/go-$go_version
export PATH=$GOROOT/bin:$PATH GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local GOFLAGS=
export GOPATH=$cache/gopath:$cache/root/usr/share/gocode GOCACHE=$cache/gocache
mkdir -p "$cache/gopath/src/$prog" && cp "$here/$prog/main.go" "$cache/gopath/src/$prog/"
(cd "$cache/gopath/src/$prog" && go build -o "$out" .) >&2
echo "$out"
