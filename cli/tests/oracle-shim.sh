#!/bin/bash
# Harness self-test, not used by CI: run the CLI suite against qemu-img
# itself, renaming the program in its messages as imgtool prints them:
#   IMGTOOL_TEST_BIN=$PWD/cli/tests/oracle-shim.sh cargo test -p imgtool-cli
# A test that fails here encodes something qemu-img does not do.
# Called through a symlink named qemu-img, it keeps qemu-img's name.
if [ "$(basename "$0")" = qemu-img ]; then
    exec -a "$0" qemu-img "$@"
fi
# Help texts name the program in their usage lines.
for a in "$@"; do
    if [ "$a" = --help ] || [ "$a" = -h ]; then
        out=$(mktemp)
        err=$(mktemp)
        rc=0
        qemu-img "$@" >"$out" 2>"$err" || rc=$?
        sed -e 's/qemu-img/imgtool/g' "$out"
        sed -e 's/qemu-img/imgtool/g' "$err" >&2
        rm -f "$out" "$err"
        exit "$rc"
    fi
done
{
    qemu-img "$@" 2>&1 1>&3 3>&- |
        sed -e 's/^qemu-img\([: ]\)/imgtool\1/' -e "s/Try 'qemu-img /Try 'imgtool /" 1>&2
    rc=${PIPESTATUS[0]}
} 3>&1
exit "$rc"
