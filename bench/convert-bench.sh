#!/usr/bin/env bash
# imgtool convert vs qemu-img convert on 1 GiB images.
#
#   bench/convert-bench.sh [N]        (N runs per tool and case, default 3)
#
# Environment: BENCH_DIR (scratch dir, default a new dir under /var/tmp;
# needs ~10 GiB), SIZE_MIB (default 1024), KEEP=1 keeps the scratch dir
# (and a later run with the same BENCH_DIR and SIZE_MIB reuses its inputs),
# CASES=REGEX runs only the cases whose name matches (grep -E), SKIP=REGEX
# leaves out those that match; IMGTOOL=PATH benches that binary instead of
# building one.
#
# Makes a raw input with a realistic mix (~50% random data, ~25% text-like
# compressible data, ~25% holes, in 256 KiB pieces), and from it with
# qemu-img a qcow2, a compressed qcow2 and one image of every other format
# and vmdk subformat, then times each conversion with both tools,
# alternating them (after one untimed warm-up run whose outputs are
# compared), each run after the same cache warm-up of its input.
# Prints the median wall time and median CPU time (user+sys) of N runs,
# ours/qemu's, and for -c the output size ratio. Not run in CI (needs
# minutes and disk).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-3}
SIZE_MIB=${SIZE_MIB:-1024}
for t in qemu-img python3 cargo du; do
    command -v "$t" >/dev/null || { echo "bench: needs $t" >&2; exit 1; }
done

if [ -z "${IMGTOOL:-}" ]; then
    echo "building release ..." >&2
    cargo build --release -q -p imgtool-cli
    IMGTOOL=$PWD/target/release/imgtool
fi

DIR=${BENCH_DIR:-$(mktemp -d /var/tmp/imgtool-bench.XXXXXX)}
mkdir -p "$DIR"
cleanup() { [ "${KEEP:-}" = 1 ] || rm -rf "$DIR"; }
trap cleanup EXIT

# Inputs, each in its own directory (vmdk subformats have extent files):
# TAG FORMAT [CREATE OPTIONS]. Made from the raw one by qemu-img.
INPUTS=(
    "qcow2 qcow2"
    "qcow2-c qcow2 -c"
    "qcow qcow"
    "qed qed"
    "vdi vdi"
    "vpc vpc"
    "vhdx vhdx"
    "vmdk vmdk"
    "vmdk-flat vmdk -o subformat=monolithicFlat"
    "vmdk-2gs vmdk -o subformat=twoGbMaxExtentSparse"
    "vmdk-2gf vmdk -o subformat=twoGbMaxExtentFlat"
    "vmdk-stream vmdk -o subformat=streamOptimized"
)
if [ "$(cat "$DIR/inputs.stamp" 2>/dev/null)" != "$SIZE_MIB ${#INPUTS[@]}" ]; then
    echo "making ${SIZE_MIB} MiB inputs in $DIR ..." >&2
    rm -rf "$DIR"/in-*
    mkdir -p "$DIR/in-raw"
    python3 - "$DIR/in-raw/img" "$SIZE_MIB" <<'PY'
import os, random, sys
path, size_mib = sys.argv[1], int(sys.argv[2])
piece = 256 * 1024
rng = random.Random(42)
vocab = ("the of and cluster image qcow2 refcount table backing guest host data "
         "snapshot offset header entry zero L1 L2 kernel boot log error warning "
         "INFO DEBUG 2024-05-01T12:00:00Z request served bytes user id=").split()
words = []
n = 0
while n < 4 << 20:
    w = rng.choice(vocab)
    words.append(w)
    n += len(w) + 1
    if rng.random() < 0.08:
        words.append("\n")
pool = " ".join(words).encode()
with open(path, "wb") as f:
    f.truncate(size_mib << 20)
    for i in range((size_mib << 20) // piece):
        r = rng.random()
        if r < 0.5:
            f.seek(i * piece)
            f.write(os.urandom(piece))
        elif r < 0.75:
            start = rng.randrange(0, len(pool) - piece)
            f.seek(i * piece)
            f.write(pool[start:start + piece])
        # else: a hole
PY
    for spec in "${INPUTS[@]}"; do
        read -r tag fmt opts <<<"$spec"
        mkdir -p "$DIR/in-$tag"
        # shellcheck disable=SC2086 # opts holds several words on purpose
        qemu-img convert $opts -f raw -O "$fmt" "$DIR/in-raw/img" "$DIR/in-$tag/img"
    done
    echo "$SIZE_MIB ${#INPUTS[@]}" >"$DIR/inputs.stamp"
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
warm() { cat "$1"/* >/dev/null; }
median() { printf '%s\n' "$@" | sort -g | sed -n "$((($# + 1) / 2))p"; }
# Runs "$@" and appends "WALL CPU" (CPU = user+sys of it and its threads).
timed() {
    python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
rc = subprocess.run(sys.argv[1:]).returncode
wall = time.monotonic() - t
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall:.3f} {r.ru_utime + r.ru_stime:.3f}")
sys.exit(rc)
PY
}

# run_case NAME INPUT_TAG ARGS... (ARGS name the input "IN", the output "OUT")
results=()
run_case() {
    local name=$1 tag=$2
    shift 2
    if [ -n "${CASES:-}" ] && ! grep -qE -- "$CASES" <<<"$name"; then
        return
    fi
    if [ -n "${SKIP:-}" ] && grep -qE -- "$SKIP" <<<"$name"; then
        return
    fi
    echo "  $name" >&2
    local -a q_wall=() o_wall=() q_cpu=() o_cpu=()
    local in="$DIR/in-$tag" size_ratio="-"
    # Run 0 is a warm-up whose outputs are kept and compared; it is not
    # timed. In the timed runs both outputs are removed before each run:
    # a tool writing while the other's output still filled the page cache
    # was measured up to 2.5x slower (page allocation in this VM), which
    # made whichever tool ran second look slow. The order alternates too.
    for ((i = 0; i <= N; i++)); do
        local order="qemu imgtool"
        ((i % 2 == 0)) || order="imgtool qemu"
        for tool in $order; do
            local bin=qemu-img out="$DIR/out-qemu"
            [ "$tool" = imgtool ] && bin=$IMGTOOL out="$DIR/out-ours"
            if ((i == 0)); then
                rm -rf "$out"
            else
                rm -rf "$DIR/out-qemu" "$DIR/out-ours"
            fi
            mkdir -p "$out"
            sync
            warm "$in"
            local args=("${@/IN/$in/img}")
            args=("${args[@]/OUT/$out/out}")
            local wc
            wc=$(timed "$bin" "${args[@]}")
            ((i == 0)) && continue
            if [ "$tool" = qemu ]; then
                q_wall+=("${wc% *}") q_cpu+=("${wc#* }")
            else
                o_wall+=("${wc% *}") o_cpu+=("${wc#* }")
            fi
        done
        ((i == 0)) || continue
        # Both outputs must hold the same guest data, or the timing means
        # nothing; -c and streamOptimized output sizes are compared too.
        qemu-img compare -q "$DIR/out-qemu/out" "$DIR/out-ours/out" \
            || { echo "bench: $name: outputs differ" >&2; exit 1; }
        case "$name" in *"-c"* | *stream*)
            local qs os
            qs=$(du -bc "$DIR/out-qemu"/* | tail -n1 | cut -f1)
            os=$(du -bc "$DIR/out-ours"/* | tail -n1 | cut -f1)
            size_ratio=$(python3 -c "print(f'{$os/$qs:.3f} ({$os} / {$qs} bytes)')")
            ;;
        esac
    done
    local qw ow qc oc
    qw=$(median "${q_wall[@]}") ow=$(median "${o_wall[@]}")
    qc=$(median "${q_cpu[@]}") oc=$(median "${o_cpu[@]}")
    results+=("$(python3 -c "
print(f'| {\"$name\":<30} | {$ow:>6.2f} | {$qw:>6.2f} | {$ow/max($qw,1e-3):>5.2f} '
      f'| {$oc:>6.2f} | {$qc:>6.2f} | {$oc/max($qc,1e-3):>5.2f} | $size_ratio |')")")
    rm -rf "$DIR/out-qemu" "$DIR/out-ours"
}

run_case "raw -> qcow2" raw convert -f raw -O qcow2 IN OUT
run_case "qcow2 -> raw" qcow2 convert -f qcow2 -O raw IN OUT
run_case "raw -> qcow2 -c" raw convert -c -f raw -O qcow2 IN OUT
run_case "compressed qcow2 -> raw" qcow2-c convert -f qcow2 -O raw IN OUT
for spec in "${INPUTS[@]}"; do
    read -r tag fmt opts <<<"$spec"
    case "$tag" in qcow2*) continue ;; esac
    label=$fmt
    [ -n "$opts" ] && label="$fmt ${opts#-o subformat=}"
    # shellcheck disable=SC2086 # opts holds several words on purpose
    run_case "raw -> $label" raw convert -f raw -O "$fmt" $opts IN OUT
    run_case "$label -> raw" "$tag" convert -f "$fmt" -O raw IN OUT
done

echo
echo "imgtool $(git describe --always --dirty 2>/dev/null || echo '?') vs $(qemu-img --version | head -n1)"
echo "input: ${SIZE_MIB} MiB raw (~50% random, ~25% text, ~25% holes); $(nproc) cores; median of $N runs"
echo "load average before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews both tools)"
echo "wall: elapsed seconds; cpu: user+sys seconds; ratio: ours/qemu (below 1: imgtool is faster)"
echo
echo "| case                           | wall ours | wall qemu | ratio | cpu ours | cpu qemu | ratio | size ours/qemu |"
echo "|--------------------------------|--------|--------|-------|--------|--------|-------|----------------|"
printf '%s\n' "${results[@]}"
