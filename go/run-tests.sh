#!/usr/bin/env bash
# Test the Go package against an installed copy of libimgtool:
#   1. make install PREFIX=<temp dir> (cargo build --release + headers + .pc)
#   2. go vet and gofmt (must be clean), go test -race with PKG_CONFIG_PATH
#      and LD_LIBRARY_PATH pointing at the temporary prefix.
# qemu-img/qemu-io make the test images and judge the results.
#
# Installs golang-go and pkg-config with apt-get when missing and running
# as root. Environment: GO (default: go), GOTESTFLAGS (extra go test flags,
# e.g. "-run Convert -v"), KEEP_PREFIX=1 keeps the temporary install.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
GO=${GO:-go}

need_apt=()
command -v "$GO" >/dev/null || need_apt+=(golang-go)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v cc >/dev/null || need_apt+=(gcc)
if ((${#need_apt[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "go/run-tests: installing ${need_apt[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null ||
            { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null; }
    else
        echo "go/run-tests: missing ${need_apt[*]} (install them, or run as root)" >&2
        exit 1
    fi
fi
for tool in qemu-img qemu-io; do
    command -v "$tool" >/dev/null || { echo "go/run-tests: $tool not found" >&2; exit 1; }
done

prefix=$(mktemp -d "${TMPDIR:-/tmp}/imgtool-go-prefix.XXXXXX")
cleanup() { [[ ${KEEP_PREFIX:-} == 1 ]] || rm -rf "$prefix"; }
trap cleanup EXIT
echo "go/run-tests: installing libimgtool into $prefix" >&2
make -s -C "$root" install PREFIX="$prefix" >&2

export PKG_CONFIG_PATH=$prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LD_LIBRARY_PATH=$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CGO_ENABLED=1
# Go's build cache does not key cgo packages on pkg-config's output, so a
# package cached from an earlier run would link with -L of a prefix that
# is gone. CGO_LDFLAGS is part of the key: naming this prefix there (as an
# rpath, which also lets the test binary find the library) forces a
# rebuild of the package against this install.
export CGO_LDFLAGS="${CGO_LDFLAGS:-} -Wl,-rpath,$prefix/lib"
# No network: the module has no dependencies.
export GOFLAGS=${GOFLAGS:--mod=mod} GOPROXY=off
# A fresh CI container may have no HOME; go needs a cache directory.
if [[ -z ${HOME:-} || ! -w ${HOME:-/nonexistent} ]]; then
    export HOME=$prefix/home
    mkdir -p "$HOME"
fi

cd "$here"
unformatted=$(gofmt -l .)
if [[ -n $unformatted ]]; then
    echo "go/run-tests: not gofmt-formatted: $unformatted" >&2
    exit 1
fi
"$GO" vet ./...
race=-race
# The race detector needs a 64-bit Linux/amd64|arm64 toolchain with its runtime.
"$GO" env GOARCH | grep -qE '^(amd64|arm64)$' || race=
# shellcheck disable=SC2086
"$GO" test -count=1 $race ${GOTESTFLAGS:-} ./...
