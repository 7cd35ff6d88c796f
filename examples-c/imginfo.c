/*
 * imginfo - print what libimgtool knows about an image.
 *
 *   imginfo [-f FMT] [-U] [--json | --map | --block-status | --summary] IMAGE
 *
 * --json prints the `qemu-img info --output=json` document
 * (imgtool_info_json); --map iterates imgtool_block_status over the whole
 * image and prints the extents the way `qemu-img map --output=json` does
 * (adjacent runs with the same status merged); --summary prints the typed
 * fields of imgtool_get_info as "key: value" lines, keys named as in the
 * JSON, and one "snapshot: ID NAME VM-STATE-SIZE" line per internal
 * snapshot (imgtool_snapshot_get). Without any of them, --json and --map.
 * -U opens without taking locks (force-share).
 */
#define _POSIX_C_SOURCE 200809L

#include <imgtool.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, int rc)
{
    fprintf(stderr, "imginfo: %s failed: %s [%s]\n", what, imgtool_last_error(),
            imgtool_strerror(rc));
    return rc == IMGTOOL_ENOTSUP ? 77 : 1;
}

/* qemu-img map merges a run into the previous one when nothing but the
 * length differs and host offsets (if any) continue. */
static int same_run(const imgtool_extent *a, const imgtool_extent *b)
{
    if (a->flags != b->flags || a->depth != b->depth || a->has_offset != b->has_offset)
        return 0;
    return !a->has_offset || a->offset + a->length == b->offset;
}

static void print_extent(const imgtool_extent *e, uint64_t start, int first)
{
    printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %" PRIu32
           ", \"present\": %s, \"zero\": %s, \"data\": %s, \"compressed\": %s",
           first ? "[" : ",\n", start, e->length, e->depth,
           e->flags & IMGTOOL_EXTENT_PRESENT ? "true" : "false",
           e->flags & IMGTOOL_EXTENT_ZERO ? "true" : "false",
           e->flags & IMGTOOL_EXTENT_DATA ? "true" : "false",
           e->flags & IMGTOOL_EXTENT_COMPRESSED ? "true" : "false");
    if (e->has_offset)
        printf(", \"offset\": %" PRIu64, e->offset);
    printf("}");
}

static int print_block_status(imgtool_image *img)
{
    uint64_t size, off = 0, start = 0;
    imgtool_extent cur = {0}, e;
    int rc, first = 1;

    if ((rc = imgtool_get_size(img, &size)) != IMGTOOL_OK)
        return fail("imgtool_get_size", rc);
    while (off < size) {
        if ((rc = imgtool_block_status(img, off, size - off, &e)) != IMGTOOL_OK)
            return fail("imgtool_block_status", rc);
        if (cur.length && same_run(&cur, &e)) {
            cur.length += e.length;
        } else {
            if (cur.length)
                print_extent(&cur, start, first), first = 0;
            cur = e;
            start = off;
        }
        off += e.length;
    }
    if (cur.length)
        print_extent(&cur, start, first), first = 0;
    printf(first ? "[]\n" : "]\n");
    return 0;
}

/* imgtool_map returns qemu-img map's entries themselves, one per call. */
static int print_map(imgtool_image *img)
{
    uint64_t size;
    imgtool_map_entry e = {.struct_size = sizeof e};
    int rc;

    if ((rc = imgtool_get_size(img, &size)) != IMGTOOL_OK)
        return fail("imgtool_get_size", rc);
    for (uint64_t off = 0; off < size; off += e.length) {
        if ((rc = imgtool_map(img, off, size - off, &e)) != IMGTOOL_OK)
            return fail("imgtool_map", rc);
        imgtool_extent x = {e.length, e.offset, e.depth, e.flags, e.has_offset};
        print_extent(&x, e.start, off == 0);
    }
    printf(size ? "]\n" : "[]\n");
    return 0;
}

static int print_json(imgtool_image *img)
{
    char *json = NULL;
    int rc = imgtool_info_json(img, &json);
    if (rc != IMGTOOL_OK)
        return fail("imgtool_info_json", rc);
    printf("%s\n", json);
    imgtool_free_string(json);
    return 0;
}

static int print_summary(imgtool_image *img)
{
    imgtool_info info = {.struct_size = sizeof info};
    int rc = imgtool_get_info(img, &info);
    if (rc != IMGTOOL_OK)
        return fail("imgtool_get_info", rc);
    printf("format: %s\n", info.format);
    printf("virtual-size: %" PRIu64 "\n", info.virtual_size);
    if (info.has_actual_size)
        printf("actual-size: %" PRIu64 "\n", info.actual_size);
    if (info.cluster_size)
        printf("cluster-size: %" PRIu64 "\n", info.cluster_size);
    if (info.backing_filename)
        printf("backing-filename: %s\n", info.backing_filename);
    if (info.full_backing_filename)
        printf("full-backing-filename: %s\n", info.full_backing_filename);
    if (info.backing_format)
        printf("backing-filename-format: %s\n", info.backing_format);
    printf("dirty-flag: %s\n", info.dirty ? "true" : "false");
    printf("encrypted: %s\n", info.encrypted ? "true" : "false");
    printf("snapshots: %" PRIu32 "\n", info.snapshot_count);
    for (size_t i = 0;; i++) {
        imgtool_snapshot sn = {.struct_size = sizeof sn};
        rc = imgtool_snapshot_get(img, i, &sn);
        if (rc == IMGTOOL_ERANGE)
            break;
        if (rc != IMGTOOL_OK) {
            imgtool_info_free(&info);
            return fail("imgtool_snapshot_get", rc);
        }
        printf("snapshot: %s %s %" PRIu64 "\n", sn.id, sn.name, sn.vm_state_size);
    }
    printf("chain-length: %" PRIu32 "\n", info.chain_length);
    printf("format-probed: %s\n", info.format_probed ? "true" : "false");
    imgtool_info_free(&info);
    return 0;
}

int main(int argc, char **argv)
{
    const char *format = NULL, *path = NULL;
    int want_json = 0, want_map = 0, want_status = 0, want_summary = 0, rc;
    imgtool_open_options o;
    imgtool_image *img = NULL;

    if ((rc = imgtool_open_options_init(&o)) != IMGTOOL_OK)
        return fail("imgtool_open_options_init", rc);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-f") == 0 && i + 1 < argc)
            format = argv[++i];
        else if (strcmp(argv[i], "-U") == 0)
            o.flags |= IMGTOOL_OPEN_FORCE_SHARE;
        else if (strcmp(argv[i], "--json") == 0)
            want_json = 1;
        else if (strcmp(argv[i], "--map") == 0)
            want_map = 1;
        else if (strcmp(argv[i], "--block-status") == 0)
            want_status = 1;
        else if (strcmp(argv[i], "--summary") == 0)
            want_summary = 1;
        else if (!path && argv[i][0] != '-')
            path = argv[i];
        else {
            fprintf(stderr, "usage: imginfo [-f FMT] [-U] [--json | --map | --block-status | --summary] IMAGE\n");
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "usage: imginfo [-f FMT] [-U] [--json | --map | --block-status | --summary] IMAGE\n");
        return 2;
    }
    if (!want_json && !want_map && !want_status && !want_summary)
        want_json = want_map = 1;
    o.format = format;

    if ((rc = imgtool_open(path, &o, &img)) != IMGTOOL_OK)
        return fail("imgtool_open", rc);
    int status = 0;
    if (want_json)
        status = print_json(img);
    if (!status && want_map)
        status = print_map(img);
    if (!status && want_status)
        status = print_block_status(img);
    if (!status && want_summary)
        status = print_summary(img);
    if ((rc = imgtool_close(img)) != IMGTOOL_OK && !status)
        status = fail("imgtool_close", rc);
    return status;
}
