#!/usr/bin/env bash
# Check that the committed C header include/imgtool.h is exactly what
# cbindgen (the version pinned in Cargo.lock) generates from src/ffi now.
#
# Needs only cargo: build.rs generates the header, and IMGTOOL_HEADER_OUT
# makes it write to a temporary file instead of include/. `cargo check`
# runs build scripts without compiling the library, so this is quick.
#
# The reference is the header in the HEAD commit when this is a git
# checkout (a plain `cargo build` earlier in the same CI job may already
# have rewritten the working-tree copy), otherwise the working-tree file.
#
# Usage: scripts/check-header.sh [--worktree]
#   --worktree  compare with the working-tree file even in a git checkout
#               (useful before committing).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
header=include/imgtool.h
tmp=$(mktemp -d "${TMPDIR:-/tmp}/imgtool-header.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "check-header: generating $header from src/ffi ..." >&2
IMGTOOL_HEADER_OUT="$tmp/generated.h" cargo check --locked --quiet --lib -p imgtool
if [[ ! -s $tmp/generated.h ]]; then
    echo "check-header: build.rs did not write the header (is IMGTOOL_HEADER_OUT honoured?)" >&2
    exit 2
fi

ref="$header"
what="working tree"
if [[ ${1:-} != --worktree ]] && git rev-parse --is-inside-work-tree >/dev/null 2>&1 \
    && git cat-file -e "HEAD:$header" 2>/dev/null; then
    git show "HEAD:$header" >"$tmp/committed.h"
    ref="$tmp/committed.h"
    what="HEAD"
fi
if [[ ! -f $ref ]]; then
    echo "check-header: $header is missing; run 'cargo build' and commit it" >&2
    exit 1
fi

if diff -u --label "$header ($what)" --label "$header (generated)" "$ref" "$tmp/generated.h"; then
    echo "check-header: $header ($what) is up to date" >&2
else
    echo >&2
    echo "check-header: $header ($what) differs from a fresh generation (diff above)." >&2
    echo "check-header: run 'cargo build' (it rewrites $header) and commit the result." >&2
    exit 1
fi
