/*
 * imgerrors - the error contract of libimgtool, checked from C.
 *
 *   imgerrors DIR
 *
 * Uses scratch files in DIR. Checks: NULL arguments give IMGTOOL_EINVAL
 * with a message; a missing file gives IMGTOOL_ENOENT with errno ENOENT;
 * out-of-range I/O gives IMGTOOL_ERANGE; writing through a read-only
 * handle fails; a bad struct_size is refused; unknown options are refused
 * with qemu-img's message; the last error is per thread and cleared by the
 * next successful call; version macros match the library; the report
 * structs (imgtool_info, imgtool_check_report) need struct_size.
 */
#define _POSIX_C_SOURCE 200809L

#include <imgtool.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define EXPECT(cond)                                                                   \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "imgerrors:%d: expected %s (last error: \"%s\")\n",        \
                    __LINE__, #cond, imgtool_last_error());                            \
            failures++;                                                                \
        }                                                                              \
    } while (0)

static int contains(const char *s, const char *sub)
{
    return s && strstr(s, sub) != NULL;
}

static void *other_thread(void *arg)
{
    /* Nothing failed on this thread yet. */
    *(int *)arg = imgtool_last_error()[0] == '\0' && imgtool_last_error_code() == IMGTOOL_OK;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: imgerrors DIR\n");
        return 2;
    }
    char path[4096], missing[4096];
    snprintf(path, sizeof path, "%s/errors.raw", argv[1]);
    snprintf(missing, sizeof missing, "%s/does-not-exist.img", argv[1]);

    /* Versions. */
    char v[64];
    snprintf(v, sizeof v, "%d.%d.%d", IMGTOOL_VERSION_MAJOR, IMGTOOL_VERSION_MINOR,
             IMGTOOL_VERSION_PATCH);
    EXPECT(strcmp(v, IMGTOOL_VERSION_STRING) == 0);
    EXPECT(strcmp(imgtool_version(), IMGTOOL_VERSION_STRING) == 0);

    /* A raw image to work on. _init and C agree on the struct layouts. */
    imgtool_create_options c;
    EXPECT(imgtool_create_options_init(&c) == IMGTOOL_OK);
    EXPECT(c.struct_size == sizeof c);
    EXPECT(c.size == IMGTOOL_SIZE_DEFAULT && c.format == NULL && c.filename == NULL);
    imgtool_convert_options cv;
    EXPECT(imgtool_convert_options_init(&cv) == IMGTOOL_OK);
    EXPECT(cv.struct_size == sizeof cv);
    EXPECT(cv.num_workers == 8 && cv.sparse_size == 4096 && cv.flags == 0);
    c.filename = path;
    c.size = 1 << 20;
    EXPECT(imgtool_create(&c) == IMGTOOL_OK);
    EXPECT(imgtool_last_error()[0] == '\0');

    /* NULL arguments. */
    imgtool_image *img = (imgtool_image *)&c; /* must be overwritten with NULL */
    EXPECT(imgtool_open(NULL, NULL, &img) == IMGTOOL_EINVAL);
    EXPECT(img == NULL);
    EXPECT(contains(imgtool_last_error(), "'path' must not be NULL"));
    EXPECT(imgtool_last_error_code() == IMGTOOL_EINVAL);
    EXPECT(imgtool_open(path, NULL, NULL) == IMGTOOL_EINVAL);
    EXPECT(imgtool_create(NULL) == IMGTOOL_EINVAL);
    EXPECT(imgtool_get_size(NULL, NULL) == IMGTOOL_EINVAL);
    EXPECT(imgtool_info_json(NULL, NULL) == IMGTOOL_EINVAL);
    EXPECT(imgtool_close(NULL) == IMGTOOL_OK);
    imgtool_free_string(NULL);

    /* The last error is per thread. */
    EXPECT(imgtool_create(NULL) == IMGTOOL_EINVAL);
    int clean = 0;
    pthread_t t;
    EXPECT(pthread_create(&t, NULL, other_thread, &clean) == 0);
    pthread_join(t, NULL);
    EXPECT(clean);
    EXPECT(imgtool_last_error_code() == IMGTOOL_EINVAL);

    /* Missing file: code, errno and qemu-img's wording. */
    EXPECT(imgtool_open(missing, NULL, &img) == IMGTOOL_ENOENT);
    EXPECT(imgtool_last_errno() == ENOENT);
    EXPECT(contains(imgtool_last_error(), "No such file or directory"));
    EXPECT(contains(imgtool_last_error(), "Could not open"));

    /* Options struct not initialised with _init. */
    imgtool_open_options o;
    memset(&o, 0, sizeof o);
    EXPECT(imgtool_open(path, &o, &img) == IMGTOOL_EINVAL);
    EXPECT(contains(imgtool_last_error(), "struct_size"));
    EXPECT(imgtool_open_options_init(&o) == IMGTOOL_OK);
    EXPECT(o.struct_size == sizeof o);
    o.flags = 0x80000000u;
    EXPECT(imgtool_open(path, &o, &img) == IMGTOOL_EINVAL);

    /* Unknown creation option and format: qemu-img's messages. */
    c.options = "no_such_option=1";
    EXPECT(imgtool_create(&c) == IMGTOOL_EINVAL);
    EXPECT(strcmp(imgtool_last_error(), "Invalid parameter 'no_such_option'") == 0);
    c.options = NULL;
    c.format = "nosuchformat";
    EXPECT(imgtool_create(&c) == IMGTOOL_EINVAL);
    EXPECT(strcmp(imgtool_last_error(), "Unknown file format 'nosuchformat'") == 0);

    /* Read-only handle: reads work, writes do not, ranges are checked. */
    EXPECT(imgtool_open_options_init(&o) == IMGTOOL_OK);
    o.format = "raw";
    EXPECT(imgtool_open(path, &o, &img) == IMGTOOL_OK);
    if (img) {
        char buf[16] = {0};
        uint64_t size = 0;
        EXPECT(imgtool_get_size(img, &size) == IMGTOOL_OK && size == 1 << 20);
        EXPECT(imgtool_read(img, buf, sizeof buf, 0) == IMGTOOL_OK);
        EXPECT(imgtool_read(img, NULL, 1, 0) == IMGTOOL_EINVAL);
        EXPECT(imgtool_read(img, buf, 0, 0) == IMGTOOL_OK);
        EXPECT(imgtool_read(img, buf, sizeof buf, size - 8) == IMGTOOL_ERANGE);
        EXPECT(imgtool_read(img, buf, sizeof buf, UINT64_MAX - 4) == IMGTOOL_ERANGE);
        EXPECT(imgtool_write(img, buf, sizeof buf, 0) != IMGTOOL_OK);
        imgtool_extent e;
        EXPECT(imgtool_block_status(img, size, 1, &e) == IMGTOOL_ERANGE);
        EXPECT(imgtool_block_status(img, 0, size, &e) == IMGTOOL_OK);
        EXPECT(e.length > 0 && e.length <= size && (e.flags & IMGTOOL_EXTENT_PRESENT));
        /* Zeroes and discards need a writable handle too. */
        EXPECT(imgtool_write_zeroes(img, 0, 512, 0) == IMGTOOL_EACCES);
        EXPECT(imgtool_discard(img, 0, 512) == IMGTOOL_EACCES);
        EXPECT(imgtool_write_zeroes(img, 0, 512, 0x100) == IMGTOOL_EINVAL);
        /* imgtool_get_info needs struct_size; its strings are ours to free. */
        imgtool_info info;
        memset(&info, 0, sizeof info);
        EXPECT(imgtool_get_info(img, &info) == IMGTOOL_EINVAL);
        EXPECT(contains(imgtool_last_error(), "struct_size"));
        info.struct_size = sizeof info;
        EXPECT(imgtool_get_info(img, &info) == IMGTOOL_OK);
        EXPECT(info.struct_size == sizeof info);
        EXPECT(info.virtual_size == 1 << 20 && info.cluster_size == 0);
        EXPECT(strcmp(info.format, "raw") == 0 && !info.format_probed);
        EXPECT(info.backing_filename == NULL && info.chain_length == 1);
        imgtool_info_free(&info);
        imgtool_info_free(&info);
        imgtool_info_free(NULL);
        char *json = NULL;
        EXPECT(imgtool_info_json(img, &json) == IMGTOOL_OK);
        EXPECT(contains(json, "\"format\": \"raw\""));
        EXPECT(contains(json, "\"virtual-size\": 1048576"));
        imgtool_free_string(json);
        EXPECT(imgtool_close(img) == IMGTOOL_OK);
    }

    /* Convert argument checks. */
    const char *srcs[] = {path};
    EXPECT(imgtool_convert(NULL, 1, "x", NULL, NULL, NULL) == IMGTOOL_EINVAL);
    EXPECT(imgtool_convert(srcs, 0, "x", NULL, NULL, NULL) == IMGTOOL_EINVAL);
    EXPECT(imgtool_convert(srcs, 1, NULL, NULL, NULL, NULL) == IMGTOOL_EINVAL);

    /* Writes without a buffer on a NULL handle. */
    EXPECT(imgtool_write_zeroes(NULL, 0, 1, 0) == IMGTOOL_EINVAL);
    EXPECT(imgtool_discard(NULL, 0, 1) == IMGTOOL_EINVAL);
    EXPECT(imgtool_get_info(NULL, NULL) == IMGTOOL_EINVAL);

    /* Check: options, report size, formats without a check. */
    imgtool_check_options ck;
    EXPECT(imgtool_check_options_init(&ck) == IMGTOOL_OK);
    EXPECT(ck.struct_size == sizeof ck && ck.repair == IMGTOOL_REPAIR_NONE && ck.log == NULL);
    char *cj = (char *)path; /* must be overwritten with NULL */
    EXPECT(imgtool_check(NULL, NULL, NULL, &cj, NULL, NULL) == IMGTOOL_EINVAL);
    EXPECT(cj == NULL);
    imgtool_check_report rep = {.struct_size = 4};
    EXPECT(imgtool_check(path, NULL, &rep, NULL, NULL, NULL) == IMGTOOL_EINVAL);
    rep.struct_size = sizeof rep;
    ck.repair = 7;
    EXPECT(imgtool_check(path, &ck, &rep, NULL, NULL, NULL) == IMGTOOL_EINVAL);
    EXPECT(imgtool_check(path, NULL, &rep, NULL, NULL, NULL) == IMGTOOL_ENOTSUP);
    EXPECT(strcmp(imgtool_last_error(), "This image format does not support checks") == 0);
    EXPECT(imgtool_check(missing, NULL, &rep, NULL, NULL, NULL) == IMGTOOL_ENOENT);

    /* Every options struct: _init sets struct_size to what C sees. */
    {
        imgtool_commit_options a;
        imgtool_rebase_options b;
        imgtool_resize_options r;
        imgtool_amend_options am;
        imgtool_snapshot_options s;
        imgtool_compare_options cm;
        imgtool_measure_options m;
        EXPECT(imgtool_commit_options_init(&a) == IMGTOOL_OK && a.struct_size == sizeof a);
        EXPECT(imgtool_rebase_options_init(&b) == IMGTOOL_OK && b.struct_size == sizeof b);
        EXPECT(imgtool_resize_options_init(&r) == IMGTOOL_OK && r.struct_size == sizeof r);
        EXPECT(imgtool_amend_options_init(&am) == IMGTOOL_OK && am.struct_size == sizeof am);
        EXPECT(imgtool_snapshot_options_init(&s) == IMGTOOL_OK && s.struct_size == sizeof s);
        EXPECT(imgtool_compare_options_init(&cm) == IMGTOOL_OK && cm.struct_size == sizeof cm);
        EXPECT(imgtool_measure_options_init(&m) == IMGTOOL_OK && m.struct_size == sizeof m);
        EXPECT(m.size == IMGTOOL_SIZE_DEFAULT);
        /* NULL paths and handles. */
        EXPECT(imgtool_commit(NULL, NULL, NULL, NULL) == IMGTOOL_EINVAL);
        EXPECT(imgtool_rebase(NULL, NULL, NULL, NULL) == IMGTOOL_EINVAL);
        EXPECT(imgtool_resize(NULL, 1, NULL) == IMGTOOL_EINVAL);
        EXPECT(imgtool_amend(path, NULL, NULL, NULL) == IMGTOOL_EINVAL);
        EXPECT(imgtool_snapshot_apply(path, NULL, NULL) == IMGTOOL_EINVAL);
        EXPECT(imgtool_compare(NULL, NULL, NULL, NULL, NULL, NULL, NULL) == IMGTOOL_EINVAL);
        EXPECT(imgtool_measure(NULL, NULL, NULL, NULL) == IMGTOOL_EINVAL);
        imgtool_map_entry me = {.struct_size = sizeof me};
        EXPECT(imgtool_map(NULL, 0, 1, &me) == IMGTOOL_EINVAL);
        /* Path-based operations name the file like qemu-img. */
        EXPECT(imgtool_commit(missing, NULL, NULL, NULL) == IMGTOOL_ENOENT);
        EXPECT(contains(imgtool_last_error(), "Could not open"));
        EXPECT(imgtool_commit(path, NULL, NULL, NULL) == IMGTOOL_EINVAL);
        EXPECT(strcmp(imgtool_last_error(), "Image does not have a backing file") == 0);
        /* raw has no internal snapshots and cannot amend. */
        EXPECT(imgtool_snapshot_create(path, "x", NULL, NULL) == IMGTOOL_ENOTSUP);
        am.options = "size=2M";
        EXPECT(imgtool_amend(path, &am, NULL, NULL) == IMGTOOL_ENOTSUP);
        /* Writable snapshot views do not exist. */
        imgtool_open_options so;
        imgtool_image *si = (imgtool_image *)&so;
        EXPECT(imgtool_open_options_init(&so) == IMGTOOL_OK);
        so.flags = IMGTOOL_OPEN_WRITABLE;
        so.snapshot = "x";
        EXPECT(imgtool_open(path, &so, &si) != IMGTOOL_OK && si == NULL);
    }

    /* Every code has a description. */
    for (int code = IMGTOOL_EPANIC; code <= IMGTOOL_OK; code++)
        EXPECT(strcmp(imgtool_strerror(code), "Unknown error code") != 0);
    EXPECT(strcmp(imgtool_strerror(-1000), "Unknown error code") == 0);

    if (failures) {
        fprintf(stderr, "imgerrors: %d check(s) failed\n", failures);
        return 1;
    }
    printf("imgerrors: all checks passed\n");
    return 0;
}
