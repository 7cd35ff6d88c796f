#!/usr/bin/env bash
# Check the exported ABI of libimgtool against abi/imgtool.symbols.
#
# Builds the release cdylib and compares the dynamic symbols it defines
# (`nm -D --defined-only`) with the committed list; any symbol added or
# removed fails the check, so ABI changes are always deliberate and
# reviewed. Also checks that
#   - nothing but imgtool_* is exported (no Rust or zstd internals leak),
#   - the soname is libimgtool.so.<major>,
#   - every function declared in include/imgtool.h is exported and every
#     exported function is declared there.
#
# Usage: scripts/check-symbols.sh [--update]
#   --update  rewrite abi/imgtool.symbols from the built library (then
#             review the diff and commit it).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
list=abi/imgtool.symbols
header=include/imgtool.h

command -v nm >/dev/null || { echo "check-symbols: nm (binutils) not found" >&2; exit 2; }
command -v readelf >/dev/null || { echo "check-symbols: readelf (binutils) not found" >&2; exit 2; }

echo "check-symbols: building the release library ..." >&2
cargo build --release --locked --quiet --lib -p imgtool

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
so=${target_dir:-target}/release/libimgtool.so
[[ -f $so ]] || { echo "check-symbols: $so was not built" >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/imgtool-symbols.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Defined dynamic symbols: "ADDR TYPE NAME[@VERSION]".
nm -D --defined-only "$so" | awk '{print $3}' | sed 's/@.*//' | LC_ALL=C sort -u >"$tmp/all"
grep '^imgtool_' "$tmp/all" >"$tmp/exported" || true

status=0
if grep -v '^imgtool_' "$tmp/all" >"$tmp/foreign"; then
    echo "check-symbols: $so exports symbols outside the imgtool_ namespace:" >&2
    sed 's/^/  /' "$tmp/foreign" >&2
    status=1
fi

soname=$(readelf -d "$so" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
if [[ $soname != "libimgtool.so.${version%%.*}" ]]; then
    echo "check-symbols: soname is '$soname', expected libimgtool.so.${version%%.*}" >&2
    status=1
fi

if [[ ${1:-} == --update ]]; then
    {
        echo "# Exported symbols of libimgtool.so (checked by scripts/check-symbols.sh)."
        echo "# Removing or renaming a line breaks the ABI (soname bump); adding one"
        echo "# is a compatible extension. Regenerate with scripts/check-symbols.sh --update."
        cat "$tmp/exported"
    } >"$list"
    echo "check-symbols: wrote $list ($(wc -l <"$tmp/exported") symbols)" >&2
fi

[[ -f $list ]] || { echo "check-symbols: $list is missing (run with --update)" >&2; exit 1; }
grep -v '^[[:space:]]*\(#\|$\)' "$list" | LC_ALL=C sort -u >"$tmp/expected"

if ! diff -u --label "$list" --label "$so (nm -D)" "$tmp/expected" "$tmp/exported"; then
    echo "check-symbols: exported symbols differ from $list (diff above; + = new in the" >&2
    echo "check-symbols: library, - = listed but gone). Removing a symbol breaks the ABI;" >&2
    echo "check-symbols: for an intended addition run scripts/check-symbols.sh --update." >&2
    status=1
fi

# Functions the header declares: "imgtool_name(" outside comments (doc
# comments mention functions too, and must not count as declarations).
grep -v '^[[:space:]]*\(/\*\|\*\)' "$header" | grep -o '\bimgtool_[A-Za-z0-9_]*(' |
    tr -d '(' | LC_ALL=C sort -u >"$tmp/declared"
# Typedef'd callback types look like calls in the header: "(*imgtool_x_fn)(".
grep -o '(\*imgtool_[A-Za-z0-9_]*)' "$header" | tr -d '(*)' | LC_ALL=C sort -u >"$tmp/fnptrs"
LC_ALL=C comm -23 "$tmp/declared" "$tmp/fnptrs" >"$tmp/declared_fns"
if ! diff -u --label "$header (declared functions)" --label "$so (exported)" \
    "$tmp/declared_fns" "$tmp/exported"; then
    echo "check-symbols: $header and the library disagree (diff above)." >&2
    status=1
fi

if ((status == 0)); then
    echo "check-symbols: $(wc -l <"$tmp/exported") exported symbols match $list; soname $soname" >&2
fi
exit $status
