#!/usr/bin/env bash
# imgtool convert vs qemu-img convert on 1 GiB images.
#
#   bench/convert-bench.sh [N]        (N runs per tool and case, default 3)
#
# Environment: BENCH_DIR (scratch dir, default a new dir under /var/tmp;
# needs ~5 GiB), SIZE_MIB (default 1024), KEEP=1 keeps the scratch dir.
#
# Makes a raw input with a realistic mix (~50% random data, ~25% text-like
# compressible data, ~25% holes, in 256 KiB pieces), a qcow2 and a
# compressed qcow2 of it (by qemu-img), then times each conversion with
# both tools, alternating them, each run after the same cache warm-up of
# its input. Prints the median wall time of N runs, ours/qemu's, and for
# -c the output size ratio. Not run in CI (needs minutes and disk).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-3}
SIZE_MIB=${SIZE_MIB:-1024}
for t in qemu-img python3 cargo; do
    command -v "$t" >/dev/null || { echo "bench: needs $t" >&2; exit 1; }
done

echo "building release ..." >&2
cargo build --release -q -p imgtool-cli
IMGTOOL=$PWD/target/release/imgtool

DIR=${BENCH_DIR:-$(mktemp -d /var/tmp/imgtool-bench.XXXXXX)}
mkdir -p "$DIR"
cleanup() { [ "${KEEP:-}" = 1 ] || rm -rf "$DIR"; }
trap cleanup EXIT

echo "making ${SIZE_MIB} MiB inputs in $DIR ..." >&2
python3 - "$DIR/in.raw" "$SIZE_MIB" <<'PY'
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
qemu-img convert -f raw -O qcow2 "$DIR/in.raw" "$DIR/in.qcow2"
qemu-img convert -c -f raw -O qcow2 "$DIR/in.raw" "$DIR/in-c.qcow2"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
now() { date +%s.%N; }
warm() { cat "$1" >/dev/null; }

# run_case NAME INPUT ARGS... (ARGS end with the output file name "OUT")
results=()
run_case() {
    local name=$1 input=$2
    shift 2
    local -a q_times=() o_times=()
    for ((i = 0; i < N; i++)); do
        for tool in qemu imgtool; do
            local bin=qemu-img out="$DIR/out-qemu"
            [ "$tool" = imgtool ] && bin=$IMGTOOL out="$DIR/out-ours"
            rm -f "$out"
            sync
            warm "$input"
            local args=("${@/OUT/$out}")
            local t0 t1
            t0=$(now)
            "$bin" "${args[@]}"
            t1=$(now)
            local dt
            dt=$(echo "$t1 - $t0" | bc -l 2>/dev/null || python3 -c "print($t1 - $t0)")
            if [ "$tool" = qemu ]; then q_times+=("$dt"); else o_times+=("$dt"); fi
        done
    done
    # Both outputs must hold the same guest data, or the timing means nothing.
    qemu-img compare -q "$DIR/out-qemu" "$DIR/out-ours" \
        || { echo "bench: $name: outputs differ" >&2; exit 1; }
    local qm om
    qm=$(printf '%s\n' "${q_times[@]}" | sort -g | sed -n "$(((N + 1) / 2))p")
    om=$(printf '%s\n' "${o_times[@]}" | sort -g | sed -n "$(((N + 1) / 2))p")
    local size_ratio="-"
    case "$name" in *"-c"*)
        local qs os
        qs=$(stat -c %s "$DIR/out-qemu")
        os=$(stat -c %s "$DIR/out-ours")
        size_ratio=$(python3 -c "print(f'{$os/$qs:.3f} ({$os} / {$qs} bytes)')")
        ;;
    esac
    results+=("$(python3 -c "print(f'| {\"$name\":<24} | {$om:>9.2f} | {$qm:>9.2f} | {$om/$qm:>10.2f} | $size_ratio |')")")
    rm -f "$DIR/out-qemu" "$DIR/out-ours"
}

run_case "raw -> qcow2" "$DIR/in.raw" convert -f raw -O qcow2 "$DIR/in.raw" OUT
run_case "qcow2 -> raw" "$DIR/in.qcow2" convert -f qcow2 -O raw "$DIR/in.qcow2" OUT
run_case "raw -> qcow2 -c" "$DIR/in.raw" convert -c -f raw -O qcow2 "$DIR/in.raw" OUT
run_case "compressed qcow2 -> raw" "$DIR/in-c.qcow2" convert -f qcow2 -O raw "$DIR/in-c.qcow2" OUT

echo
echo "imgtool $(git describe --always --dirty 2>/dev/null || echo '?') vs $(qemu-img --version | head -n1)"
echo "input: ${SIZE_MIB} MiB raw (~50% random, ~25% text, ~25% holes); $(nproc) cores; median of $N runs"
echo "load average before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews both tools)"
echo
echo "| case                     | imgtool s |  qemu s   | ours/qemu  | -c size ours/qemu |"
echo "|--------------------------|-----------|-----------|------------|-------------------|"
printf '%s\n' "${results[@]}"
