#!/usr/bin/env bash
# Builds a real kube-apiserver (1.20, from Debian bookworm's `kubernetes` source package) for the
# Kubernetes discovery tests, and caches it under ~/.cache/. Debian ships no kube-apiserver binary, but
# the source package carries the full tree with vendor/, which builds in GOPATH mode. It is the newest
# one that can: trixie's and sid's `kubernetes` sources (1.32, 1.36) are repacked to build kubectl
# only, without cmd/kube-apiserver or pkg/ (docs/kubernetes.md, "Kubernetes versions"). The tests
# turn on the EndpointSlice feature gates that later versions have on by default
# (tests/k8s/real_apiserver.py).
#
# The vendored github.com/modern-go/reflect2 (v1.0.1) is replaced by Debian's 1.0.2
# (golang-github-modern-go-reflect2-dev): under Go >= 1.18, 1.0.1's map iteration through json-iterator
# dies with `fatal error: fault` on the first custom-resource create; 1.0.2 is the release that fixed it
# (go_above_118.go), with the same API. The build is in GOPATH mode, which reads vendor/ and never
# checks vendor/modules.txt; its version line is updated anyway, so the tree says what it carries.
# And kube-openapi's type validator, which custom resources are validated with, loses its zero-value
# check: from Go 1.16 on, reflect.Zero shares one zero value, the check became true for "", and every
# empty string in a custom resource (or a CRD's `default: ""`) was refused as null ("Invalid value:
# \"null\": ... must be of type string"). Under Go 1.15, which 1.20 was released with, the check was
# never true; Kubernetes 1.21 removed it the same way.
#
# The deb-src line goes into a private apt configuration (the mirror this machine already uses), so the
# system's apt sources are never changed. Go 1.19, reflect2 1.0.2, rsync (needed by `make gen_openapi`)
# and etcd-server are installed with apt-get when missing.
#
# The binary lives in a folder named after `recipe`, which tests/k8s/real_apiserver.py reads from this
# file: a change to how the binary is built bumps it, so a machine holding a binary of an older recipe
# builds the new one on its next `make test` (the unpacked source is kept and reused). The binary is
# built under a temporary name and renamed into place, so a test run never sees a half-written file.
#
# Usage: kube-apiserver.sh   -> prints the folder holding bin/kube-apiserver (etcd is /usr/bin/etcd)
set -euo pipefail
recipe=3  # 1: the source package as it is; 2: reflect2 1.0.2 in vendor/; 3: and kube-openapi's "" fixed
cache=${MESHPLANE_KUBE_APISERVER_CACHE:-$HOME/.cache/meshplane/kube-apiserver}
out=$cache/recipe-$recipe
if [[ -x $out/bin/kube-apiserver ]]; then echo "$out"; exit 0; fi
exec 9>"${cache%/*}/.kube-apiserver.lock" 2>/dev/null || { mkdir -p "${cache%/*}"; exec 9>"${cache%/*}/.kube-apiserver.lock"; }
flock 9  # two test workers or two shells never build at once
if [[ -x $out/bin/kube-apiserver ]]; then echo "$out"; exit 0; fi
mkdir -p "$cache"/{apt/lists/partial,apt/cache/archives/partial,src} "$out/bin"

reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
need=()
[[ -x /usr/lib/go-1.19/bin/go ]] || need+=(golang-1.19-go)
[[ -f $reflect2/go_above_118.go ]] || need+=(golang-github-modern-go-reflect2-dev)
command -v rsync >/dev/null || need+=(rsync)
command -v etcd >/dev/null || need+=(etcd-server)
if ((${#need[@]})); then
  as_root=(); [[ $(id -u) == 0 ]] || as_root=(sudo)
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends "${need[@]}" >&2 ||
    { "${as_root[@]}" apt-get -o DPkg::Lock::Timeout=900 update >&2 && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends "${need[@]}" >&2; }
fi

if [[ ! -d $cache/src/tree ]]; then
  mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1)
  [[ -n $mirror ]] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  [[ -n $mirror ]] || { echo "kube-apiserver.sh: no Debian mirror configured on this machine" >&2; exit 1; }
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main" >"$cache/apt/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$cache/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$cache/apt/lists" -o "Dir::Cache=$cache/apt/cache"
    -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null -o APT::Get::List-Cleanup=0)
  apt-get "${apt_opts[@]}" update >&2
  rm -rf "$cache/src" && mkdir -p "$cache/src"
  (cd "$cache/src" && apt-get "${apt_opts[@]}" source kubernetes >&2)
  dir=$(find "$cache/src" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
  [[ -n $dir ]] || { echo "kube-apiserver.sh: apt-get source kubernetes unpacked nothing" >&2; exit 1; }
  # GOPATH mode wants the tree at $GOPATH/src/k8s.io/kubernetes.
  mkdir -p "$cache/src/gopath/src/k8s.io" && mv "$dir" "$cache/src/gopath/src/k8s.io/kubernetes"
  ln -sfn gopath/src/k8s.io/kubernetes "$cache/src/tree"
fi

export GOROOT=/usr/lib/go-1.19 GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local GOFLAGS=
export PATH=/usr/lib/go-1.19/bin:$PATH GOPATH=$cache/src/gopath GOCACHE=$cache/gocache
cd "$cache/src/gopath/src/k8s.io/kubernetes"
rm -rf vendor/github.com/modern-go/reflect2 && cp -r "$reflect2" vendor/github.com/modern-go/reflect2
sed -i 's|github.com/modern-go/reflect2 v1.0.1|github.com/modern-go/reflect2 v1.0.2|g' vendor/modules.txt
validate=vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go
sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$validate"
grep -q '^	if data == nil {$' "$validate" || { echo "kube-apiserver.sh: $validate: no zero-value check to take out" >&2; exit 1; }
# gen_openapi writes pkg/generated/openapi/zz_generated.openapi.go, which kube-apiserver imports.
# At the lowest priority: a build started by a test (or on a shared machine) must not starve the rest.
nice -n 19 make gen_openapi >&2
nice -n 19 go build -o "$out/bin/kube-apiserver.tmp" ./cmd/kube-apiserver >&2
mv "$out/bin/kube-apiserver.tmp" "$out/bin/kube-apiserver"
rm -rf "$cache/gocache"  # 1 GB of build cache; the binary is what is kept
# Binaries of older recipes (recipe 1 was $cache/bin): a server already running from one keeps running.
for old in "$cache/bin" "$cache"/recipe-*; do [[ $old == "$out" ]] || rm -rf "$old"; done
echo "$out"
