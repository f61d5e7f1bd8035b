#!/usr/bin/env bash
# Build the Docker Compose v2 CLI plugin from the Go module proxy, so that
# `docker compose config -q` (tests/test_compose.py) can check docker-compose.yml on a machine
# that has only the docker client. It needs no Docker engine. Takes about 3 minutes on 2 cores
# (download ~0.5 GB of modules, compile), which is why CI doesn't run it; the test skips there.
set -euo pipefail

VERSION=${COMPOSE_VERSION:-v2.40.3}
DEST=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-compose

if docker compose version >/dev/null 2>&1; then
  echo "compose-plugin: $(docker compose version) is already installed"
  exit 0
fi
command -v go >/dev/null || { echo "compose-plugin: needs Go (https://go.dev/dl or apt-get install golang-go)" >&2; exit 1; }

# `go install github.com/docker/compose/v2/cmd@VERSION` refuses ("go.mod ... contains one or
# more exclude directives"), so build inside the module, where its go.mod applies.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dir=$(go mod download -json "github.com/docker/compose/v2@$VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
(cd "$work/src" && CGO_ENABLED=0 go build -trimpath \
  -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$VERSION" -o "$work/docker-compose" ./cmd)
install -D -m 755 "$work/docker-compose" "$DEST"
echo "compose-plugin: installed $DEST ($(docker compose version))"
