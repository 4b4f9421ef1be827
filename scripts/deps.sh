#!/usr/bin/env bash
# Installs the Debian packages a target needs, when missing.
#   scripts/deps.sh test    what the test suite needs
#   scripts/deps.sh bench     what `make bench-http` needs (wrk, curl, redis,
#                             Go with gin, redigo and lib/pq for benches/peers/go-gin)
#   scripts/deps.sh bench-pg  bench, and a Postgres server for the peer's pg mode
#   scripts/deps.sh docs      mdBook and lychee (`make docs`), built by cargo
set -euo pipefail
need=()
case "${1:-test}" in
  test)
    # The Redis tests start their own redis-server on free ports.
    command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
    # promtool checks the /metrics exposition.
    command -v promtool >/dev/null 2>&1 || need+=(prometheus)
    # The remote-configuration tests start their own etcd.
    command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
    # One test watches the binary's fsyncs under strace.
    command -v strace >/dev/null 2>&1 || need+=(strace)
    # etcd-client compiles etcd's protobuf definitions.
    command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
    # The docs page is rendered in headless Chromium.
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    # The OpenAPI document is checked by a standard validator and a client
    # is generated from it (both from PyPI, pinned).
    command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
    ;;
  bench|bench-pg)
    command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
    command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    # auth-cost.sh signs its tokens and certificate with openssl.
    command -v openssl >/dev/null 2>&1 || need+=(openssl)
    # The Go + Gin peer (benches/peers/go-gin) that compare-table.sh
    # measures troupe against, built from Debian's Go packages (GOPATH
    # mode, no module proxy); seed.sh is Python.
    command -v go >/dev/null 2>&1 || need+=(golang-go)
    [ -d /usr/share/gocode/src/github.com/gin-gonic/gin ] || need+=(golang-github-gin-gonic-gin-dev)
    [ -d /usr/share/gocode/src/github.com/gomodule/redigo ] || need+=(golang-github-gomodule-redigo-dev)
    [ -d /usr/share/gocode/src/github.com/lib/pq ] || need+=(golang-github-lib-pq-dev)
    command -v python3 >/dev/null 2>&1 || need+=(python3)
    if [ "$1" = bench-pg ]; then
      ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
    fi
    ;;
  docs)
    # Neither is packaged by Debian: cargo builds them once, pinned.
    command -v mdbook >/dev/null 2>&1 || cargo install --locked mdbook --version 0.5.4
    command -v lychee >/dev/null 2>&1 || cargo install --locked lychee --version 0.24.2
    exit 0
    ;;
  *) echo "usage: $0 test|bench|bench-pg|docs" >&2; exit 2 ;;
esac
if [ ${#need[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts a default cluster on install; compare.sh runs its own, pinned.
  case " ${need[*]} " in
    *" postgresql "*) $SUDO service postgresql stop >/dev/null 2>&1 || true ;;
  esac
fi
if [ "${1:-test}" = test ]; then
  python3 -c 'import openapi_spec_validator, openapi_python_client' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check \
      'openapi-spec-validator==0.9.0' 'openapi-python-client==0.29.1' \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      'openapi-spec-validator==0.9.0' 'openapi-python-client==0.29.1'
fi
