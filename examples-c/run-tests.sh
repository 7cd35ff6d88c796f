#!/usr/bin/env bash
# Run the C examples against qemu-img/qemu-io as the oracle.
#
# Environment (set by `make check`):
#   BIN            directory with the built examples
#   ASAN_BIN       directory with the same examples built with
#                  -fsanitize=address,undefined (empty: not built)
#   LIBDIR         where libimgtool.so is installed (added to LD_LIBRARY_PATH)
#   VALGRIND       auto (default: use it when installed) | yes | no
#   REQUIRE_QCOW2  1: a qcow2 case the library reports unsupported fails
#                  instead of being skipped
#   STRICT_ORACLE  1: differences from `qemu-img info/map` output fail
#                  instead of being reported as notes
set -uo pipefail

BIN=${BIN:?BIN must point at the built examples}
ASAN_BIN=${ASAN_BIN:-}
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

# run_rc NAME WANT CMD...: like run, but the command must exit with WANT.
run_rc() {
    local name=$1 want=$2; shift 2
    "$@" >"$log" 2>&1
    local rc=$?
    if [[ $rc -eq $want ]]; then
        pass "$name"; return 0
    fi
    echo "(exit status $rc, expected $want)" >>"$log"
    fail "$name"; return 1
}

# Big-endian u64 at byte offset $2 of file $1.
be64() { od -An -tu8 --endian=big -j "$2" -N8 "$1" | tr -d ' '; }

# Leak one cluster in a qcow2 with 64 KiB clusters and 16-bit refcounts:
# append a cluster and give it refcount 1 without any reference. Prints
# the cluster's index.
make_leak() {
    local f=$1 rt rb size n
    rt=$(be64 "$f" 48)
    rb=$(be64 "$f" "$rt")
    size=$(stat -c %s "$f")
    n=$(((size + 65535) / 65536))
    truncate -s $(((n + 1) * 65536)) "$f"
    printf '\000\001' | dd of="$f" bs=1 seek=$((rb + 2 * n)) conv=notrunc status=none
    echo "$n"
}

# sigint_case NAME IMGCONV SRC DST: start a conversion that pauses in its
# progress callback, send SIGINT as Ctrl-C would, and require exit status
# 130 with DST removed (imgconv checks the return code and the file too).
sigint_case() {
    local name=$1 conv=$2 src=$3 dst=$4 pid rc i had_partial=no
    rm -f "$dst"
    "$conv" -O qcow2 -m 1 --pause-at 30 "$src" "$dst" >"$log" 2>&1 &
    pid=$!
    for ((i = 0; i < 300; i++)); do
        grep -q 'imgconv: paused' "$log" && break
        sleep 0.1
    done
    [[ -e $dst ]] && had_partial=yes
    kill -INT "$pid" 2>/dev/null
    wait "$pid"
    rc=$?
    if [[ $rc -eq 130 && ! -e $dst && $had_partial == yes ]]; then
        pass "$name"
    else
        echo "(exit status $rc, partial output while paused: $had_partial, left behind: \
$([[ -e $dst ]] && echo yes || echo no))" >>"$log"
        fail "$name"
    fi
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

# --- the usage example of README.md -------------------------------------------
mkdir -p "$work/readme"
if run "README.md usage example" env -C "$work/readme" "$BIN/readme-example"; then
    qcheck "$work/readme/disk.qcow2"
    qcompare -F raw "$work/readme/disk.qcow2" "$work/readme/disk.raw"
fi

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
    "$QEMU_IMG" map --output=json -f "$fmt" "$src" >"$work/qmap.json"
    if run "imginfo --map src.$fmt" "$BIN/imginfo" --map "$src"; then
        cp "$log" "$work/map.json"
        if diff -u "$work/qmap.json" "$work/map.json" >"$log"; then
            pass "imgtool_map on src.$fmt is qemu-img map --output=json"
        else
            fail "imgtool_map on src.$fmt is qemu-img map --output=json"
        fi
    fi
    # Block status is lower level (no QEMU refinements); differences are notes.
    if run "imginfo --block-status src.$fmt" "$BIN/imginfo" --block-status "$src"; then
        cp "$log" "$work/bs.json"
        if ! diff -u "$work/qmap.json" "$work/bs.json" >"$log"; then
            note "merged imgtool_block_status on src.$fmt differs from qemu-img map"
        fi
    fi
done

# --- imgtool_get_info vs qemu-img info -----------------------------------------
"$QEMU_IMG" create -q -f qcow2 -b src.raw -F raw "$work/overlay-info.qcow2" 2>"$log" ||
    fail "qemu-img create overlay-info.qcow2"
for name in src.raw src.qcow2 overlay-info.qcow2; do
    if run "imginfo --summary $name" "$BIN/imginfo" --summary "$work/$name"; then
        cp "$log" "$work/summary"
        # Top-level scalar fields of qemu-img's JSON (4-space indent) that
        # imgtool_info has, as "key: value".
        "$QEMU_IMG" info --output=json "$work/$name" |
            sed -n 's/^    "\(format\|virtual-size\|cluster-size\|backing-filename\|full-backing-filename\|backing-filename-format\|dirty-flag\)": "\{0,1\}\([^",]*\)"\{0,1\},\{0,1\}$/\1: \2/p' \
            >"$work/qsummary"
        : >"$log"
        while IFS= read -r line; do
            grep -qxF -- "$line" "$work/summary" || echo "missing: $line" >>"$log"
        done <"$work/qsummary"
        if [[ -s $work/qsummary && ! -s $log ]]; then
            pass "imgtool_get_info $name matches qemu-img info ($(wc -l <"$work/qsummary") fields)"
        else
            cat "$work/summary" >>"$log"; fail "imgtool_get_info $name matches qemu-img info"
        fi
    fi
done
if grep -qx 'chain-length: 2' "$work/summary"; then
    pass "imgtool_get_info overlay chain length"
else
    cp "$work/summary" "$log"; fail "imgtool_get_info overlay chain length"
fi

# Internal snapshots, as qemu-img snapshot -l lists them.
cp "$work/src.qcow2" "$work/snap.qcow2"
"$QEMU_IMG" snapshot -c first "$work/snap.qcow2" && "$QEMU_IMG" snapshot -c "second one" "$work/snap.qcow2"
if run "imginfo --summary with snapshots" "$BIN/imginfo" --summary "$work/snap.qcow2"; then
    if grep -qx 'snapshots: 2' "$log" && grep -qx 'snapshot: 1 first 0' "$log" &&
        grep -qx 'snapshot: 2 second one 0' "$log"; then
        pass "imgtool_snapshot_get lists qemu-img's snapshots"
    else
        fail "imgtool_snapshot_get lists qemu-img's snapshots"
    fi
fi

# --- check and repair vs qemu-img check -----------------------------------------
"$QEMU_IMG" convert -O qcow2 "$work/src.qcow2" "$work/chk.qcow2"
run "imgcheck clean qcow2" "$BIN/imgcheck" "$work/chk.qcow2"
leaked=$(make_leak "$work/chk.qcow2")
cp "$work/chk.qcow2" "$work/chk-orig.qcow2"
"$QEMU_IMG" check --output=json "$work/chk.qcow2" >"$work/qcheck.json" 2>/dev/null
qrc=$?
if run_rc "imgcheck leaked qcow2: qemu-img's exit status ($qrc)" "$qrc" \
    "$BIN/imgcheck" "$work/chk.qcow2"; then
    if grep -q "Leaked cluster $leaked " "$log"; then
        pass "imgcheck logs the leaked cluster through the log callback"
    else
        fail "imgcheck logs the leaked cluster through the log callback"
    fi
fi
if run_rc "imgcheck --json leaked qcow2" "$qrc" "$BIN/imgcheck" --json "$work/chk.qcow2"; then
    grep -v '^Leaked cluster' "$log" >"$work/check.json"
    if diff -u "$work/qcheck.json" "$work/check.json" >"$log"; then
        pass "imgcheck --json is qemu-img check --output=json"
    else
        fail "imgcheck --json is qemu-img check --output=json"
    fi
fi
if run "imgcheck -r leaks" "$BIN/imgcheck" -r leaks "$work/chk.qcow2"; then
    if grep -q '(repaired)' "$log"; then pass "imgcheck -r leaks reports the repair"; else
        fail "imgcheck -r leaks reports the repair"; fi
    qcheck "$work/chk.qcow2"
    qcompare -f qcow2 -F qcow2 "$work/chk.qcow2" "$work/src.qcow2"
fi
run_rc "imgcheck raw: no check (63, as qemu-img)" 63 "$BIN/imgcheck" "$work/src.raw"

# --- commit, rebase, resize, amend, snapshot, compare, measure ------------------
# Each operation runs on one copy with imgops and on another with qemu-img;
# qemu-img then judges both results.
ops=$work/ops
mkdir -p "$ops"
mkchain() { # DIR: base.qcow2 (QEMU's pattern) <- top.qcow2 (more data)
    mkdir -p "$1"
    cp "$work/src.qcow2" "$1/base.qcow2"
    "$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 "$1/top.qcow2"
    "$QEMU_IO" -f qcow2 -c 'write -P 0x5a 1000000 300000' -c 'write -z 8M 64k' \
        "$1/top.qcow2" >/dev/null
}
mkchain "$ops/a"; mkchain "$ops/q"
"$QEMU_IMG" convert -O raw "$ops/a/top.qcow2" "$ops/top-view.raw"
run "imgops commit cancelled" "$BIN/imgops" commit --cancel "$ops/a/top.qcow2"
qcompare -F raw "$ops/a/top.qcow2" "$ops/top-view.raw"
if run "imgops commit" "$BIN/imgops" commit "$ops/a/top.qcow2"; then
    "$QEMU_IMG" commit -q "$ops/q/top.qcow2"
    qcheck "$ops/a/base.qcow2"
    qcompare "$ops/a/base.qcow2" "$ops/q/base.qcow2"
    qcompare -F raw "$ops/a/top.qcow2" "$ops/top-view.raw"
    if "$QEMU_IMG" map --output=json "$ops/a/top.qcow2" | grep -q '"depth": 0, "present": true'; then
        fail "commit emptied the top image"
    else
        pass "commit emptied the top image"
    fi
fi
rm -rf "$ops/a" "$ops/q"; mkchain "$ops/a"
"$QEMU_IMG" create -q -f qcow2 "$ops/a/other.qcow2" 16M
"$QEMU_IO" -f qcow2 -c 'write -P 0x77 0 6M' "$ops/a/other.qcow2" >/dev/null
if run "imgops rebase (safe) onto other.qcow2" "$BIN/imgops" rebase -b other.qcow2 -F qcow2 \
    "$ops/a/top.qcow2"; then
    qcheck "$ops/a/top.qcow2"
    qcompare -F raw "$ops/a/top.qcow2" "$ops/top-view.raw"
    if "$QEMU_IMG" info "$ops/a/top.qcow2" | grep -q '^backing file: other.qcow2'; then
        pass "rebase recorded the new backing file"
    else
        fail "rebase recorded the new backing file"
    fi
fi
if run "imgops rebase -b '' (flatten)" "$BIN/imgops" rebase -b "" "$ops/a/top.qcow2"; then
    qcompare -F raw "$ops/a/top.qcow2" "$ops/top-view.raw"
fi
cp "$work/src.qcow2" "$ops/r.qcow2"
if run "imgops resize 40M" "$BIN/imgops" resize "$ops/r.qcow2" 41943040; then
    qcheck "$ops/r.qcow2"
    if "$QEMU_IMG" info --output=json "$ops/r.qcow2" | grep -q '"virtual-size": 41943040'; then
        pass "resize: qemu-img info shows 40M"
    else
        fail "resize: qemu-img info shows 40M"
    fi
    qcompare "$ops/r.qcow2" "$work/src.qcow2" # the grown tail reads as zeros
fi
run_rc "imgops resize smaller without --shrink fails" 1 "$BIN/imgops" resize "$ops/r.qcow2" 1048576
cp "$work/src.qcow2" "$ops/m.qcow2"
if run "imgops amend -o compat=0.10" "$BIN/imgops" amend -o compat=0.10 "$ops/m.qcow2"; then
    qcheck "$ops/m.qcow2"
    qcompare "$ops/m.qcow2" "$work/src.qcow2"
    if "$QEMU_IMG" info "$ops/m.qcow2" | grep -q 'compat: 0.10'; then
        pass "amend: qemu-img info shows compat 0.10"
    else
        fail "amend: qemu-img info shows compat 0.10"
    fi
fi
cp "$work/src.qcow2" "$ops/s.qcow2"
if run "imgops snapshot -c" "$BIN/imgops" snapshot -c before "$ops/s.qcow2"; then
    "$QEMU_IO" -f qcow2 -c 'write -P 0x66 0 2M' "$ops/s.qcow2" >/dev/null
    if "$QEMU_IMG" snapshot -l "$ops/s.qcow2" | grep -q ' before '; then
        pass "qemu-img snapshot -l lists the snapshot"
    else
        fail "qemu-img snapshot -l lists the snapshot"
    fi
    run "imgops snapshot -a" "$BIN/imgops" snapshot -a before "$ops/s.qcow2"
    qcompare "$ops/s.qcow2" "$work/src.qcow2"
    run "imgops snapshot -d" "$BIN/imgops" snapshot -d before "$ops/s.qcow2"
    qcheck "$ops/s.qcow2"
    run_rc "imgops snapshot -d of a deleted snapshot fails" 1 \
        "$BIN/imgops" snapshot -d before "$ops/s.qcow2"
fi
# compare: exit status and message as qemu-img's.
cmp_case() { # NAME ARGS...
    local name=$1 qout qrc; shift
    qout=$("$QEMU_IMG" compare "$@" 2>/dev/null); qrc=$?
    if run_rc "imgops compare $name (exit $qrc)" "$qrc" "$BIN/imgops" compare "$@"; then
        if [[ $(cat "$log") == "$qout" ]]; then pass "imgops compare $name prints qemu-img's line"
        else { echo "qemu-img: $qout"; } >>"$log"; fail "imgops compare $name prints qemu-img's line"; fi
    fi
}
cmp_case "identical" "$work/src.qcow2" "$work/src.raw"
cmp_case "different" "$work/src.qcow2" "$ops/top-view.raw"
cmp_case "sizes" "$work/src.qcow2" "$ops/r.qcow2"
cmp_case "strict" -s "$work/src.qcow2" "$work/src.raw"
# measure: the JSON document as qemu-img's.
meas_case() { # NAME ARGS...
    local name=$1; shift
    "$QEMU_IMG" measure --output=json "$@" >"$work/qmeasure.json" 2>/dev/null
    if run "imgops measure $name" "$BIN/imgops" measure "$@"; then
        if diff -u "$work/qmeasure.json" "$log" >"$work/measure.diff"; then
            pass "imgops measure $name is qemu-img measure --output=json"
        else
            cp "$work/measure.diff" "$log"; fail "imgops measure $name is qemu-img measure --output=json"
        fi
    fi
}
meas_case "--size 1G qcow2" -O qcow2 --size 1073741824
meas_case "src.qcow2 -> qcow2 4k clusters" -O qcow2 -o cluster_size=4096 "$work/src.qcow2"
meas_case "src.raw -> raw" -O raw "$work/src.raw"
meas_case "snapshot of snap.qcow2" -O qcow2 -l first "$work/snap.qcow2"

# convert --bitmaps: the target gets the bitmaps qemu-img convert --bitmaps gives it.
cp "$work/src.qcow2" "$ops/bm.qcow2"
"$QEMU_IMG" bitmap --add -g 65536 "$ops/bm.qcow2" b1 &&
    "$QEMU_IMG" bitmap --add --disable "$ops/bm.qcow2" b2 &&
    "$QEMU_IO" -f qcow2 -c 'write -P 0x21 3M 200k' "$ops/bm.qcow2" >/dev/null
rm -f "$ops/bm-q.qcow2" "$ops/bm-i.qcow2"
"$QEMU_IMG" convert --bitmaps -O qcow2 "$ops/bm.qcow2" "$ops/bm-q.qcow2"
if run "imgconv --bitmaps" "$BIN/imgconv" --bitmaps -O qcow2 "$ops/bm.qcow2" "$ops/bm-i.qcow2"; then
    qcheck "$ops/bm-i.qcow2"
    qcompare "$ops/bm-i.qcow2" "$ops/bm-q.qcow2"
    bml() { "$QEMU_IMG" info --output=json "$1" | sed -n '/"bitmaps"/,/]/p'; }
    if [[ -n $(bml "$ops/bm-q.qcow2") && $(bml "$ops/bm-q.qcow2") == "$(bml "$ops/bm-i.qcow2")" ]]; then
        pass "imgconv --bitmaps: qemu-img info lists the bitmaps qemu-img convert --bitmaps copies"
    else
        { bml "$ops/bm-q.qcow2"; bml "$ops/bm-i.qcow2"; } >>"$log"
        fail "imgconv --bitmaps: qemu-img info lists the bitmaps qemu-img convert --bitmaps copies"
    fi
fi
run_rc "imgconv --bitmaps into raw fails (IMGTOOL_ENOTSUP: exit 77)" 77 "$BIN/imgconv" --bitmaps -O raw "$ops/bm.qcow2" "$ops/bm-x.raw"
if grep -q "Format driver 'raw' does not support bitmaps" "$log"; then pass "imgconv --bitmaps into raw: qemu-img's message"
else fail "imgconv --bitmaps into raw: qemu-img's message"; fi

# dd: the same arguments as qemu-img dd; qemu-img judges the outputs.
dd_case() { # NAME ARGS... (ending in INPUT; OUTPUT names are added)
    local name=$1; shift
    rm -f "$ops/dd-q.img" "$ops/dd-i.img"
    local qargs=() iargs=() x fmt=raw
    for x in "$@"; do
        case $x in
        bs=* | count=* | skip=*) qargs+=("$x"); iargs+=("$x") ;;
        -O) qargs+=(-O); iargs+=(-O) ;;
        qcow2 | vdi) qargs+=("$x"); iargs+=("$x"); fmt=$x ;;
        *) qargs+=("if=$x"); iargs+=("$x") ;;
        esac
    done
    "$QEMU_IMG" dd "${qargs[@]}" "of=$ops/dd-q.img" 2>/dev/null
    if run "imgops dd $name" "$BIN/imgops" dd "${iargs[@]}" "$ops/dd-i.img"; then
        local qs is
        qs=$("$QEMU_IMG" info --output=json "$ops/dd-q.img" | grep '"virtual-size"')
        is=$("$QEMU_IMG" info --output=json "$ops/dd-i.img" | grep '"virtual-size"')
        if [[ $qs == "$is" && -n $qs ]]; then pass "imgops dd $name: qemu-img dd's size"; else
            echo "qemu-img: $qs ours: $is" >>"$log"; fail "imgops dd $name: qemu-img dd's size"; fi
        [[ $fmt == raw ]] || qcheck "$ops/dd-i.img"
        qcompare -f "$fmt" -F "$fmt" "$ops/dd-i.img" "$ops/dd-q.img"
    fi
}
dd_case "whole qcow2 to raw" "$work/src.qcow2"
dd_case "bs=64k skip=3 count=20 to qcow2" bs=65536 skip=3 count=20 -O qcow2 "$work/src.qcow2"
dd_case "bs=4096 count=100 to vdi" bs=4096 count=100 -O vdi "$work/src.raw"
run_rc "imgops dd to an unknown format fails" 1 "$BIN/imgops" dd -O nosuch "$work/src.raw" "$ops/dd-x.img"
if grep -q 'Unknown file format' "$log"; then pass "imgops dd: qemu-img's message for an unknown format"
else fail "imgops dd: qemu-img's message for an unknown format"; fi

# bench: writes with a pattern land where qemu-img bench's do.
cp "$work/src.qcow2" "$ops/bi.qcow2"; cp "$work/src.qcow2" "$ops/bq.qcow2"
"$QEMU_IMG" bench -q -w -c 300 -d 8 -s 12288 -o 4096 --pattern=0x6b --flush-interval=50 \
    -f qcow2 "$ops/bq.qcow2" >/dev/null
if run "imgops bench -w (300 pattern writes, flushes)" "$BIN/imgops" bench -w -f qcow2 \
    --count 300 --depth 8 --bufsize 12288 --offset 4096 --pattern 0x6b --flush 50 "$ops/bi.qcow2"; then
    if grep -q '^300 requests' "$log"; then pass "imgops bench reports 300 requests"; else
        fail "imgops bench reports 300 requests"; fi
    qcheck "$ops/bi.qcow2"
    qcompare "$ops/bi.qcow2" "$ops/bq.qcow2"
fi
run "imgops bench (reads)" "$BIN/imgops" bench --count 2000 --depth 4 "$work/src.qcow2"
run_rc "imgops bench --flush without -w fails" 1 "$BIN/imgops" bench --flush 64 "$work/src.qcow2"
if grep -q 'only available in write tests' "$log"; then pass "imgops bench: qemu-img's message for --flush-interval on reads"
else fail "imgops bench: qemu-img's message for --flush-interval on reads"; fi
run_rc "imgops bench past the end fails" 1 "$BIN/imgops" bench --count 10 --offset 1099511627776 "$work/src.qcow2"

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
# Ctrl-C in the middle: the partial output is removed.
sigint_case "imgconv interrupted by SIGINT removes the partial output" "$BIN/imgconv" \
    "$work/src.qcow2" "$work/sigint.qcow2"
# Two sources, concatenated; qemu-img convert is the oracle.
if "$QEMU_IMG" convert -O raw "$work/src.raw" "$work/src.qcow2" "$work/cat-oracle.raw" 2>"$log"; then
    if run "imgconv src.raw + src.qcow2 -> raw (concatenated)" \
        "$BIN/imgconv" "$work/src.raw" "$work/src.qcow2" "$work/cat.raw"; then
        qcompare -f raw -F raw "$work/cat.raw" "$work/cat-oracle.raw"
    fi
fi

# --- encrypted images: secrets by id ---------------------------------------------
# A LUKS qcow2 and an AES qcow2 made by qemu-img with data written by qemu-io;
# imgsecret reads them with imgtool_secret_set + key_secret, converts one into
# a new LUKS qcow2 and writes into it; qemu-img (given the same secret) judges.
enc=$work/enc && mkdir -p "$enc"
sec=(--object secret,id=sec0,data=s3cr3t)
encimg() { # NAME OPTIONS
    "$QEMU_IMG" create "${sec[@]}" -q -f qcow2 -o "$2" "$enc/$1.qcow2" 4M &&
        "$QEMU_IO" "${sec[@]}" --image-opts -c 'write -P 0x6b 64k 192k' -c 'write -P 0x11 3M 4k' \
            "driver=qcow2,file.filename=$enc/$1.qcow2,encrypt.key-secret=sec0" >/dev/null
}
if encimg luks encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 2>"$log" &&
    encimg aes encrypt.format=aes,encrypt.key-secret=sec0 2>>"$log"; then
    for e in luks aes; do
        img=$enc/$e.qcow2
        "$QEMU_IMG" convert "${sec[@]}" --image-opts -O raw \
            "driver=qcow2,file.filename=$img,encrypt.key-secret=sec0" "$enc/$e-oracle.raw"
        if run "imgsecret read $e.qcow2 (key_secret; an older struct_size cannot unlock it)" \
            "$BIN/imgsecret" read s3cr3t "$img" "$enc/$e.raw"; then
            run "imgsecret read $e.qcow2 equals qemu-img convert" cmp "$enc/$e.raw" "$enc/$e-oracle.raw"
        fi
    done
    # LUKS checks the password; legacy AES cannot (any key decrypts, to garbage).
    run_rc "imgsecret read luks.qcow2 with a wrong password fails" 1 \
        "$BIN/imgsecret" read wrong "$enc/luks.qcow2" "$enc/luks-wrong.raw"
    run "imgsecret nosecret luks.qcow2 fails to read" "$BIN/imgsecret" nosecret "$enc/luks.qcow2"
    if run "imgsecret convert luks.qcow2 -> new LUKS qcow2" \
        "$BIN/imgsecret" convert s3cr3t "$enc/luks.qcow2" "$enc/conv.qcow2"; then
        run "qemu-img info conv.qcow2 says LUKS" grep -q '"format": "luks"' \
            <("$QEMU_IMG" info --output=json "$enc/conv.qcow2")
        run "qemu-img check conv.qcow2" "$QEMU_IMG" check -q "${sec[@]}" --image-opts \
            "driver=qcow2,file.filename=$enc/conv.qcow2,encrypt.key-secret=sec0"
        run "qemu-img compare conv.qcow2 with its source" "$QEMU_IMG" compare -q "${sec[@]}" \
            --image-opts "driver=qcow2,file.filename=$enc/luks.qcow2,encrypt.key-secret=sec0" \
            "driver=qcow2,file.filename=$enc/conv.qcow2,encrypt.key-secret=sec0"
        if run "imgsecret write 64k at 1M into conv.qcow2" \
            "$BIN/imgsecret" write s3cr3t "$enc/conv.qcow2" 1048576; then
            run "qemu-io reads the write back" "$QEMU_IO" "${sec[@]}" --image-opts \
                -c 'read -P 0x5a 1M 64k' -c 'read -P 0x6b 64k 192k' \
                "driver=qcow2,file.filename=$enc/conv.qcow2,encrypt.key-secret=sec0"
        fi
    fi
else
    fail "qemu-img create of encrypted qcow2 images"
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
    run "valgrind imginfo --map src.qcow2" "${vg[@]}" "$BIN/imginfo" --map "$work/src.qcow2"
    mkchain "$ops/vg"
    run_rc "valgrind imgops compare" 1 "${vg[@]}" "$BIN/imgops" compare "$ops/vg/top.qcow2" \
        "$ops/vg/base.qcow2"
    run "valgrind imgops measure" "${vg[@]}" "$BIN/imgops" measure -O qcow2 "$ops/vg/top.qcow2"
    run "valgrind imgops commit" "${vg[@]}" "$BIN/imgops" commit "$ops/vg/top.qcow2"
    run "valgrind imgops dd" "${vg[@]}" "$BIN/imgops" dd bs=4096 skip=1 -O qcow2 \
        "$ops/vg/top.qcow2" "$ops/vg/dd.qcow2"
    run "valgrind imgops bench -w" "${vg[@]}" "$BIN/imgops" bench -w --count 200 --depth 8 \
        --flush 50 "$ops/vg/top.qcow2"
    run "valgrind imginfo --summary overlay" "${vg[@]}" "$BIN/imginfo" --summary \
        "$work/overlay-info.qcow2"
    cp "$work/chk-orig.qcow2" "$work/vgchk.qcow2"
    run_rc "valgrind imgcheck --json leaked qcow2" 3 "${vg[@]}" "$BIN/imgcheck" --json \
        "$work/vgchk.qcow2"
    run "valgrind imgcheck -r leaks" "${vg[@]}" "$BIN/imgcheck" -r leaks "$work/vgchk.qcow2"
    [[ -e $enc/luks.qcow2 ]] && run "valgrind imgsecret read luks.qcow2" "${vg[@]}" \
        "$BIN/imgsecret" read s3cr3t "$enc/luks.qcow2" "$enc/vg.raw"
else
    echo "(valgrind not used: VALGRIND=$VALGRIND, installed: $(command -v valgrind || echo no))"
fi

# --- AddressSanitizer + UBSan builds ----------------------------------------------
# The C side is instrumented (every buffer the examples hand to libimgtool,
# every string they get back and free); ASan's allocator also serves the
# library's allocations, so double frees and leaks of returned strings show.
if [[ -n $ASAN_BIN ]]; then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=98:strict_string_checks=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=97
    export LSAN_OPTIONS=suppressions=$(cd "$(dirname "$0")" && pwd)/lsan.supp
    run "asan imgerrors" "$ASAN_BIN/imgerrors" "$work"
    rm -rf "$work/readme" && mkdir -p "$work/readme"
    run "asan README.md usage example" env -C "$work/readme" "$ASAN_BIN/readme-example"
    run "asan imginfo src.qcow2" "$ASAN_BIN/imginfo" "$work/src.qcow2"
    run "asan imginfo --summary overlay" "$ASAN_BIN/imginfo" --summary "$work/overlay-info.qcow2"
    if run "asan imgrw src.raw -> raw (3 threads)" "$ASAN_BIN/imgrw" -f raw -n 200 -t 3 -s 21 \
        "$work/src.raw" "$work/asan.raw" "$work/asan.shadow"; then
        qcompare -f raw -F raw "$work/asan.raw" "$work/asan.shadow"
    fi
    if run "asan imgrw src.qcow2 -> qcow2 overlay (3 threads)" "$ASAN_BIN/imgrw" -f qcow2 -b \
        -n 200 -t 3 -s 22 "$work/src.qcow2" "$work/asan.qcow2" "$work/asan.shadow"; then
        qcheck "$work/asan.qcow2"
        qcompare -f qcow2 -F raw "$work/asan.qcow2" "$work/asan.shadow"
    fi
    run "asan imgconv src.qcow2 -> qcow2 compressed" "$ASAN_BIN/imgconv" -c -O qcow2 -m 4 \
        "$work/src.qcow2" "$work/asanc.qcow2"
    run "asan imgconv cancelled midway" "$ASAN_BIN/imgconv" -O qcow2 --cancel-at 30 \
        "$work/src.qcow2" "$work/asan-cancel.qcow2"
    sigint_case "asan imgconv interrupted by SIGINT" "$ASAN_BIN/imgconv" "$work/src.qcow2" \
        "$work/asan-sigint.qcow2"
    run "asan imginfo --map src.qcow2" "$ASAN_BIN/imginfo" --map "$work/src.qcow2"
    mkchain "$ops/asan"
    run_rc "asan imgops compare" 1 "$ASAN_BIN/imgops" compare "$ops/asan/top.qcow2" \
        "$ops/asan/base.qcow2"
    run "asan imgops measure" "$ASAN_BIN/imgops" measure -O qcow2 "$ops/asan/top.qcow2"
    run "asan imgops commit" "$ASAN_BIN/imgops" commit "$ops/asan/top.qcow2"
    run "asan imgops rebase" "$ASAN_BIN/imgops" rebase -b "" "$ops/asan/top.qcow2"
    run "asan imgops snapshot -c" "$ASAN_BIN/imgops" snapshot -c x "$ops/asan/top.qcow2"
    run "asan imgops dd" "$ASAN_BIN/imgops" dd bs=4096 skip=1 -O qcow2 "$ops/asan/top.qcow2" \
        "$ops/asan/dd.qcow2"
    run "asan imgops bench -w" "$ASAN_BIN/imgops" bench -w --count 500 --depth 16 --flush 100 \
        "$ops/asan/top.qcow2"
    cp "$work/chk-orig.qcow2" "$work/asanchk.qcow2"
    run_rc "asan imgcheck --json leaked qcow2" 3 "$ASAN_BIN/imgcheck" --json "$work/asanchk.qcow2"
    run "asan imgcheck -r leaks" "$ASAN_BIN/imgcheck" -r leaks "$work/asanchk.qcow2"
    [[ -e $enc/luks.qcow2 ]] && run "asan imgsecret read luks.qcow2" \
        "$ASAN_BIN/imgsecret" read s3cr3t "$enc/luks.qcow2" "$enc/asan.raw"
    unset ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS
else
    echo "(AddressSanitizer builds not used: SANITIZE=no or $CC cannot build them)"
fi

echo "== $passed passed, $failed failed, $skipped skipped, $notes notes"
if ((failed)); then
    printf 'failed: %s\n' "${failures[@]}"
    exit 1
fi
exit 0
