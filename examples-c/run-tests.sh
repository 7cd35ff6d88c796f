#!/usr/bin/env bash
# Run the C examples against qemu-img/qemu-io as the oracle.
#
# Environment (set by `make check`):
#   BIN            directory with the built examples
#   LIBDIR         where libimgtool.so is installed (added to LD_LIBRARY_PATH)
#   VALGRIND       auto (default: use it when installed) | yes | no
#   REQUIRE_QCOW2  1: a qcow2 case the library reports unsupported fails
#                  instead of being skipped
#   STRICT_ORACLE  1: differences from `qemu-img info/map` output fail
#                  instead of being reported as notes
set -uo pipefail

BIN=${BIN:?BIN must point at the built examples}
LIBDIR=${LIBDIR:-}
VALGRIND=${VALGRIND:-auto}
REQUIRE_QCOW2=${REQUIRE_QCOW2:-}
STRICT_ORACLE=${STRICT_ORACLE:-}
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}

if [[ -n $LIBDIR ]]; then
    export LD_LIBRARY_PATH=$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
for tool in "$QEMU_IMG" "$QEMU_IO"; do
    command -v "$tool" >/dev/null || { echo "run-tests: $tool not found" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/imgtool-examples.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$work/log

passed=0 failed=0 skipped=0 notes=0
failures=()

pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$1"; }
skip() { skipped=$((skipped + 1)); printf 'SKIP  %s (%s)\n' "$1" "$2"; }
fail() {
    failed=$((failed + 1)); failures+=("$1")
    printf 'FAIL  %s\n' "$1"
    [[ -s $log ]] && sed 's/^/      | /' "$log" | tail -n 40
}
note() {
    if [[ -n $STRICT_ORACLE ]]; then fail "$1"; return; fi
    notes=$((notes + 1)); printf 'NOTE  %s\n' "$1"
    [[ -s $log ]] && sed 's/^/      | /' "$log" | head -n 20
}

# run NAME CMD...: run a step, record PASS/FAIL/SKIP; returns 0 only on PASS.
# Exit status 77 means the library reported the format unsupported.
run() {
    local name=$1; shift
    "$@" >"$log" 2>&1
    local rc=$?
    if [[ $rc -eq 0 ]]; then
        pass "$name"; return 0
    elif [[ $rc -eq 77 && -z $REQUIRE_QCOW2 ]]; then
        skip "$name" "$(grep -m1 -o 'failed: .*' "$log" || echo unsupported)"; return 1
    else
        fail "$name"; return 1
    fi
}

# qemu-img check must report a clean image.
qcheck() {
    run "qemu-img check $(basename -- "$1")" "$QEMU_IMG" check -q "$1"
}
# qemu-img compare (same guest content).
qcompare() {
    local n=$# a b
    a=${*:n-1:1} b=${*:n:1}
    run "qemu-img compare $(basename -- "$a") $(basename -- "$b")" "$QEMU_IMG" compare -q "$@"
}

vg=()
case $VALGRIND in
    no) ;;
    yes | auto)
        if command -v valgrind >/dev/null; then
            vg=(valgrind -q --error-exitcode=99 --leak-check=full
                --suppressions="$(dirname "$0")/valgrind.supp"
                --errors-for-leak-kinds=definite,possible --show-leak-kinds=definite,possible)
        elif [[ $VALGRIND == yes ]]; then
            echo "run-tests: VALGRIND=yes but valgrind is not installed" >&2; exit 1
        fi ;;
esac

echo "== libimgtool C examples (work dir $work)"

# --- Images made by QEMU with a known pattern --------------------------------
mapfile -t qio_cmds < <("$BIN/imgrw" --qemu-io)
qio_args=()
for c in "${qio_cmds[@]}"; do qio_args+=(-c "$c"); done
for fmt in raw qcow2; do
    src=$work/src.$fmt
    "$QEMU_IMG" create -q -f "$fmt" "$src" 16M
    if ! "$QEMU_IO" -f "$fmt" "${qio_args[@]}" "$src" >"$log" 2>&1; then
        fail "qemu-io writes into src.$fmt"; exit 1
    fi
done

# --- API contract from C ------------------------------------------------------
run "imgerrors" "$BIN/imgerrors" "$work"
if [[ -x $BIN/header-cxx ]]; then
    run "header compiles as C++ and links" "$BIN/header-cxx"
else
    skip "header compiles as C++" "no C++ compiler"
fi

# --- Read QEMU's images, write new ones, let qemu-img judge -------------------
for fmt in raw qcow2; do
    src=$work/src.$fmt
    # Into raw.
    if run "imgrw $fmt -> raw" "$BIN/imgrw" -f raw -s 11 "$src" "$work/rw.raw" "$work/rw.shadow"; then
        qcompare -f raw -F raw "$work/rw.raw" "$work/rw.shadow"
    fi
    if run "imgrw $fmt -> raw (4 threads)" "$BIN/imgrw" -f raw -t 4 -n 800 -s 15 "$src" \
        "$work/rw.raw" "$work/rw.shadow"; then
        qcompare -f raw -F raw "$work/rw.raw" "$work/rw.shadow"
    fi
    # Into qcow2: default clusters, one thread.
    if run "imgrw $fmt -> qcow2" "$BIN/imgrw" -f qcow2 -s 12 "$src" "$work/rw.qcow2" "$work/rw.shadow"; then
        qcheck "$work/rw.qcow2"
        qcompare -f qcow2 -F raw "$work/rw.qcow2" "$work/rw.shadow"
    fi
    # Small clusters, several threads on one handle.
    if run "imgrw $fmt -> qcow2 (4k clusters, 4 threads)" "$BIN/imgrw" -f qcow2 \
        -o cluster_size=4096 -t 4 -n 800 -s 13 "$src" "$work/rw4k.qcow2" "$work/rw.shadow"; then
        qcheck "$work/rw4k.qcow2"
        qcompare -f qcow2 -F raw "$work/rw4k.qcow2" "$work/rw.shadow"
    fi
    # An overlay with QEMU's image as backing file (copy-on-write of
    # partial clusters).
    if run "imgrw qcow2 overlay on $fmt (3 threads)" "$BIN/imgrw" -f qcow2 -b -t 3 -s 14 \
        "$src" "$work/overlay.qcow2" "$work/rw.shadow"; then
        qcheck "$work/overlay.qcow2"
        qcompare -f qcow2 -F raw "$work/overlay.qcow2" "$work/rw.shadow"
    fi
    rm -f "$work"/rw*.{raw,qcow2} "$work/overlay.qcow2"
done

# --- info JSON and block status -----------------------------------------------
for fmt in raw qcow2; do
    src=$work/src.$fmt
    if run "imginfo --json src.$fmt" "$BIN/imginfo" --json "$src"; then
        cp "$log" "$work/info.json"
        if grep -q "\"format\": \"$fmt\"" "$work/info.json" &&
            grep -q '"virtual-size": 16777216' "$work/info.json"; then
            pass "imginfo --json src.$fmt names format and size"
        else
            cp "$work/info.json" "$log"; fail "imginfo --json src.$fmt names format and size"
        fi
        "$QEMU_IMG" info --output=json -f "$fmt" "$src" >"$work/qinfo.json"
        if ! diff -u "$work/qinfo.json" "$work/info.json" >"$log"; then
            note "imginfo --json src.$fmt differs from qemu-img info --output=json"
        fi
    fi
    if run "imginfo --map src.$fmt" "$BIN/imginfo" --map "$src"; then
        cp "$log" "$work/map.json"
        "$QEMU_IMG" map --output=json -f "$fmt" "$src" >"$work/qmap.json"
        if ! diff -u "$work/qmap.json" "$work/map.json" >"$log"; then
            note "imginfo --map src.$fmt differs from qemu-img map --output=json"
        fi
    fi
done

# --- convert with progress and cancel -----------------------------------------
for fmt in raw qcow2; do
    src=$work/src.$fmt
    if run "imgconv src.$fmt -> raw" "$BIN/imgconv" "$src" "$work/conv.raw"; then
        qcompare -F raw "$src" "$work/conv.raw"
    fi
    if run "imgconv src.$fmt -> qcow2" "$BIN/imgconv" -O qcow2 -m 4 "$src" "$work/conv.qcow2"; then
        qcheck "$work/conv.qcow2"
        qcompare -F qcow2 "$src" "$work/conv.qcow2"
    fi
    if run "imgconv -c src.$fmt -> qcow2 (compressed)" "$BIN/imgconv" -c -O qcow2 "$src" \
        "$work/convc.qcow2"; then
        qcheck "$work/convc.qcow2"
        qcompare -F qcow2 "$src" "$work/convc.qcow2"
    fi
    run "imgconv src.$fmt cancelled at once removes the output" \
        "$BIN/imgconv" --cancel-at 0 "$src" "$work/cancel.raw"
    run "imgconv src.$fmt -> qcow2 cancelled midway removes the output" \
        "$BIN/imgconv" -O qcow2 --cancel-at 30 "$src" "$work/cancel.qcow2"
    rm -f "$work"/conv*.{raw,qcow2}
done
# Two sources, concatenated; qemu-img convert is the oracle.
if "$QEMU_IMG" convert -O raw "$work/src.raw" "$work/src.qcow2" "$work/cat-oracle.raw" 2>"$log"; then
    if run "imgconv src.raw + src.qcow2 -> raw (concatenated)" \
        "$BIN/imgconv" "$work/src.raw" "$work/src.qcow2" "$work/cat.raw"; then
        qcompare -f raw -F raw "$work/cat.raw" "$work/cat-oracle.raw"
    fi
fi

# --- static linking -------------------------------------------------------------
if run "imgrw linked statically (raw)" "$BIN/imgrw-static" -f raw -n 50 \
    "$work/src.raw" "$work/static.raw" "$work/static.shadow"; then
    qcompare -f raw -F raw "$work/static.raw" "$work/static.shadow"
fi

# --- valgrind -------------------------------------------------------------------
if ((${#vg[@]})); then
    run "valgrind imgerrors" "${vg[@]}" "$BIN/imgerrors" "$work"
    run "valgrind imginfo src.raw" "${vg[@]}" "$BIN/imginfo" "$work/src.raw"
    run "valgrind imginfo src.qcow2" "${vg[@]}" "$BIN/imginfo" "$work/src.qcow2"
    run "valgrind imgrw src.raw -> raw (2 threads)" "${vg[@]}" "$BIN/imgrw" -f raw -n 60 -t 2 \
        "$work/src.raw" "$work/vg.raw" "$work/vg.shadow"
    if run "valgrind imgrw src.qcow2 -> qcow2 overlay (2 threads)" "${vg[@]}" "$BIN/imgrw" \
        -f qcow2 -b -n 60 -t 2 "$work/src.qcow2" "$work/vg.qcow2" "$work/vg.shadow"; then
        qcheck "$work/vg.qcow2"
        qcompare -f qcow2 -F raw "$work/vg.qcow2" "$work/vg.shadow"
    fi
    run "valgrind imgconv src.qcow2 -> qcow2 compressed" "${vg[@]}" "$BIN/imgconv" -c -O qcow2 \
        "$work/src.qcow2" "$work/vgc.qcow2"
    run "valgrind imgconv cancelled" "${vg[@]}" "$BIN/imgconv" --cancel-at 0 \
        "$work/src.raw" "$work/vgcancel.raw"
else
    echo "(valgrind not used: VALGRIND=$VALGRIND, installed: $(command -v valgrind || echo no))"
fi

echo "== $passed passed, $failed failed, $skipped skipped, $notes notes"
if ((failed)); then
    printf 'failed: %s\n' "${failures[@]}"
    exit 1
fi
exit 0
