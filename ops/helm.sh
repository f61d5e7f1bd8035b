#!/usr/bin/env bash
# helm for the chart's tests (tests/test_helm.py: `helm lint`, `helm template`), built from the Go module
# proxy because helm's own download site is not reachable from our machines. Idempotent, like stack.sh:
#
#   ops/helm.sh      install .stack/bin/helm unless that helm is already HELM_VERSION, and
#                    .stack/bin/kubecheck (deploy/helm/kubecheck) unless it is newer than its sources
#
# HELM_VERSION (v3.22.0). helm v3.22 needs Go >= 1.26 (its go.mod): the `go` on PATH when new enough, else
# the Go toolchain from the module proxy (golang.org/toolchain, hash pinned below) unpacked into .stack/go.
# Go keeps its module and build caches (GOMODCACHE, GOCACHE: ~/go/pkg/mod, ~/.cache/go-build): with them
# a rebuild takes ~5 s, without them ~100 s on 2 cores (README "Kubernetes").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=${HELM_VERSION:-v3.22.0}
GO_MIN=1.26
# The fallback toolchain and its h1 hash from the Go checksum database (what go.sum would hold for it).
GO_FALLBACK=go1.26.8
GO_FALLBACK_H1=ZOmGe1OnfREDMIdb1Qi4G9JSuDPBLGExZMQ4nis1RXM=
HELM=$ROOT/.stack/bin/helm
KUBECHECK=$ROOT/.stack/bin/kubecheck
KUBECHECK_SRC=$ROOT/deploy/helm/kubecheck

log() { printf 'helm: %s\n' "$*" >&2; }
die() {
  printf 'helm: ERROR: %s\n' "$*" >&2
  exit 1
}
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

go_ok() { # go-binary: its version is at least GO_MIN
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1
  printf '%s\n%s\n' "$GO_MIN" "${v#go}" | sort -V -C
}

# The Go toolchain as a module zip from the proxy (what `GOTOOLCHAIN=goX` fetches), checked against the
# pinned hash (Go's "h1" directory hash), unpacked into .stack/go.
fetch_go() {
  local proxy arch
  proxy=${GOPROXY:-https://proxy.golang.org}
  proxy=${proxy%%[,|]*}
  [[ $proxy == http* ]] || die "no Go >= $GO_MIN on PATH and GOPROXY ($proxy) is no proxy to fetch one from.
  Install Go $GO_MIN+ (https://go.dev/dl) and run this again."
  case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) die "no Go >= $GO_MIN on PATH and no toolchain download known for $(uname -m); install Go $GO_MIN+." ;;
  esac
  [[ $arch == amd64 ]] || die "the pinned toolchain hash is for linux-amd64; install Go $GO_MIN+ on this $arch machine."
  log "no Go >= $GO_MIN on PATH: fetching $GO_FALLBACK (~70 MB) from $proxy into .stack/go"
  python3 - "$proxy/golang.org/toolchain/@v/v0.0.1-$GO_FALLBACK.linux-$arch.zip" "$GO_FALLBACK_H1" \
    "$ROOT/.stack/go" <<'PY'
import base64, hashlib, os, shutil, stat, sys, tempfile, urllib.request, zipfile

url, want, dest = sys.argv[1:]
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "go.zip")
    urllib.request.urlretrieve(url, path)
    with zipfile.ZipFile(path) as z:
        names = sorted(n for n in z.namelist() if not n.endswith("/"))
        summary = "".join(f"{hashlib.sha256(z.read(n)).hexdigest()}  {n}\n" for n in names)
        got = base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()
        if got != want:
            sys.exit(f"helm: ERROR: {url} has hash h1:{got}, expected h1:{want}; not using it")
        z.extractall(tmp)
    root = os.path.join(tmp, *names[0].split("/")[:2])  # golang.org/toolchain@v0.0.1-goX.linux-ARCH/
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(root, dest)
# Module zips keep no file modes: make the toolchain's programs executable, as the go command does.
for sub in ("bin", "pkg/tool"):
    for dirpath, _, files in os.walk(os.path.join(dest, sub)):
        for f in files:
            p = os.path.join(dirpath, f)
            os.chmod(p, os.stat(p).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
PY
}

find_go() {
  GO=$(command -v go || true)
  if [[ -z $GO ]] || ! go_ok "$GO"; then
    GO=$ROOT/.stack/go/bin/go
    go_ok "$GO" || fetch_go
    go_ok "$GO" || die "$GO is not a working Go >= $GO_MIN"
  fi
}

# helm's release builds stamp its version and the Kubernetes version its client libraries speak (the
# default for `helm template` and lint's kubeVersion checks): do the same, reading client-go's version
# from helm's go.mod.
build_helm() {
  local t0 mod k8s ldflags pkg
  t0=$(now)
  mod=$("$GO" mod download -json "helm.sh/helm/v3@$VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
  [[ -s $mod ]] || die "could not fetch helm.sh/helm/v3@$VERSION from the module proxy (go mod download)."
  k8s=$(sed -nE 's/^\s*k8s\.io\/client-go v0\.([0-9]+)\..*/\1/p' "$mod" | head -1)
  [[ $k8s =~ ^[0-9]+$ ]] || die "could not read k8s.io/client-go's version from $mod"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$VERSION"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s"
  done
  log "building $VERSION with $("$GO" env GOVERSION) (Kubernetes 1.$k8s)"
  mkdir -p "$(dirname "$HELM")"
  GOBIN=$(dirname "$HELM") GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    "$GO" install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$VERSION"
  [[ $("$HELM" version --template '{{.Version}}') == "$VERSION" ]] || die "$HELM does not report $VERSION"
  log "installed $HELM ($VERSION) in $(since "$t0") s"
}

# Strict decoding of rendered objects into the Kubernetes API types (tests/test_helm.py).
build_kubecheck() {
  local t0
  t0=$(now)
  (cd "$KUBECHECK_SRC" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    "$GO" build -trimpath -ldflags "-s -w" -o "$KUBECHECK" .)
  log "built $KUBECHECK in $(since "$t0") s"
}

GO=
if [[ -x $HELM && $("$HELM" version --template '{{.Version}}' 2>/dev/null) == "$VERSION" ]]; then
  log "$VERSION already in $HELM"
else
  find_go
  build_helm
fi
if [[ -x $KUBECHECK && $KUBECHECK -nt $KUBECHECK_SRC/main.go && $KUBECHECK -nt $KUBECHECK_SRC/go.sum ]]; then
  log "kubecheck already in $KUBECHECK"
else
  [[ -n $GO ]] || find_go
  build_kubecheck
fi
echo "$HELM"
