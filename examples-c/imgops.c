/*
 * imgops - the whole-image operations of libimgtool, one per subcommand,
 * with qemu-img's option letters:
 *
 *   imgops commit [-f FMT] [-b BASE] [-d] [--cancel] IMAGE
 *   imgops rebase [-f FMT] [-u] [-c] -b BACKING [-F FMT] IMAGE    (-b "" removes it)
 *   imgops resize [-f FMT] [--shrink] [--preallocation MODE] IMAGE SIZE
 *   imgops amend [-f FMT] -o OPTIONS IMAGE
 *   imgops snapshot [-f FMT] (-c | -a | -d) NAME IMAGE
 *   imgops compare [-s] [-f FMT] [-F FMT] IMAGE1 IMAGE2
 *   imgops measure [-O FMT] [-o OPTIONS] (--size N | [-f FMT] [-l SNAPSHOT] IMAGE)
 *   imgops dd [-f FMT] [-O FMT] [bs=N] [count=N] [skip=N] INPUT OUTPUT
 *   imgops bench [-f FMT] [-w] [--count N] [--depth N] [--bufsize N] [--offset N]
 *                [--pattern N] [--flush N] IMAGE      (prints the request count)
 *
 * Exit status: 0 success; compare exits as qemu-img compare (0 identical,
 * 1 different) and prints its line; measure prints the --output=json
 * document; 1 on errors (message on stderr), 2 on usage errors.
 * commit --cancel cancels from the first progress call and expects
 * IMGTOOL_ECANCELED.
 */
#define _POSIX_C_SOURCE 200809L

#include <imgtool.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, int rc)
{
    fprintf(stderr, "imgops: %s: %s [%s]\n", what, imgtool_last_error(), imgtool_strerror(rc));
    return 1;
}

static int usage(void)
{
    fprintf(stderr, "usage: see the comment at the top of imgops.c\n");
    return 2;
}

/* Progress: must only grow; optionally cancel at once. */
struct progress {
    double last;
    int cancel;
    int bad;
};

static int on_progress(double pct, void *user)
{
    struct progress *p = user;
    if (pct < p->last || pct > 100.0)
        p->bad = 1;
    p->last = pct;
    return p->cancel;
}

static imgtool_image *open_ro(const char *path, const char *format, const char *snapshot)
{
    imgtool_open_options o;
    imgtool_image *img = NULL;
    if (imgtool_open_options_init(&o) != IMGTOOL_OK)
        return NULL;
    o.format = format;
    o.snapshot = snapshot;
    int rc = imgtool_open(path, &o, &img);
    if (rc != IMGTOOL_OK)
        fail("imgtool_open", rc);
    return img;
}

/* Options shared by the subcommands; each uses the ones it knows. */
struct args {
    const char *f, *F, *b, *o, *O, *l, *prealloc, *snap_name;
    char snap_action;
    int d, u, c, s, shrink, cancel, have_size;
    uint64_t size, bs, count, skip;
    int w;
    uint64_t b_count, b_depth, b_bufsize, b_offset, b_pattern, b_flush;
    int have_b_count, have_b_depth, have_b_bufsize, have_b_pattern;
    int nops;
    const char *ops[2];
};

static int parse(int argc, char **argv, struct args *a)
{
    memset(a, 0, sizeof *a);
    a->count = UINT64_MAX;
    for (int i = 2; i < argc; i++) {
        const char *x = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
#define VAL(flag, field)                                                               \
    if (strcmp(x, flag) == 0 && next) {                                                \
        a->field = next;                                                               \
        i++;                                                                           \
        continue;                                                                      \
    }
        VAL("-f", f) VAL("-F", F) VAL("-b", b) VAL("-o", o) VAL("-O", O) VAL("-l", l)
        VAL("--preallocation", prealloc)
#undef VAL
        if ((strcmp(x, "-c") == 0 || strcmp(x, "-a") == 0 || strcmp(x, "-d") == 0) &&
            strcmp(argv[1], "snapshot") == 0 && next) {
            a->snap_action = x[1];
            a->snap_name = next;
            i++;
        } else if (strcmp(x, "-d") == 0)
            a->d = 1;
        else if (strcmp(x, "-u") == 0)
            a->u = 1;
        else if (strcmp(x, "-c") == 0)
            a->c = 1;
        else if (strcmp(x, "-s") == 0)
            a->s = 1;
        else if (strcmp(x, "--shrink") == 0)
            a->shrink = 1;
        else if (strcmp(x, "--cancel") == 0)
            a->cancel = 1;
        else if (strcmp(x, "--size") == 0 && next) {
            a->size = strtoull(next, NULL, 0);
            a->have_size = 1;
            i++;
        } else if (strcmp(x, "-w") == 0)
            a->w = 1;
#define NUM(flag, field, have)                                                         \
    else if (strcmp(x, flag) == 0 && next) {                                           \
        a->field = strtoull(next, NULL, 0);                                            \
        have;                                                                          \
        i++;                                                                           \
    }
        NUM("--count", b_count, a->have_b_count = 1)
        NUM("--depth", b_depth, a->have_b_depth = 1)
        NUM("--bufsize", b_bufsize, a->have_b_bufsize = 1)
        NUM("--offset", b_offset, (void)0)
        NUM("--pattern", b_pattern, a->have_b_pattern = 1)
        NUM("--flush", b_flush, (void)0)
#undef NUM
        else if (strncmp(x, "bs=", 3) == 0)
            a->bs = strtoull(x + 3, NULL, 0);
        else if (strncmp(x, "count=", 6) == 0)
            a->count = strtoull(x + 6, NULL, 0);
        else if (strncmp(x, "skip=", 5) == 0)
            a->skip = strtoull(x + 5, NULL, 0);
        else if (x[0] != '-' && a->nops < 2)
            a->ops[a->nops++] = x;
        else
            return -1;
    }
    return 0;
}

static int do_commit(struct args *a)
{
    imgtool_commit_options o;
    struct progress p = {0, a->cancel, 0};
    imgtool_commit_options_init(&o);
    o.format = a->f;
    o.base = a->b;
    if (a->d)
        o.flags |= IMGTOOL_COMMIT_DROP;
    int rc = imgtool_commit(a->ops[0], &o, on_progress, &p);
    if (a->cancel) {
        if (rc != IMGTOOL_ECANCELED)
            return fail("imgtool_commit (expected IMGTOOL_ECANCELED)", rc);
        printf("Commit cancelled.\n");
        return 0;
    }
    if (rc != IMGTOOL_OK)
        return fail("imgtool_commit", rc);
    if (p.bad || p.last != 100.0) {
        fprintf(stderr, "imgops: commit progress ended at %.2f (bad %d)\n", p.last, p.bad);
        return 1;
    }
    printf("Image committed.\n");
    return 0;
}

static int do_rebase(struct args *a)
{
    imgtool_rebase_options o;
    struct progress p = {0, 0, 0};
    imgtool_rebase_options_init(&o);
    o.format = a->f;
    o.backing_file = a->b;
    o.backing_format = a->F;
    if (a->u)
        o.flags |= IMGTOOL_REBASE_UNSAFE;
    if (a->c)
        o.flags |= IMGTOOL_REBASE_COMPRESS;
    int rc = imgtool_rebase(a->ops[0], &o, on_progress, &p);
    return rc == IMGTOOL_OK && !p.bad ? 0 : fail("imgtool_rebase", rc);
}

static int do_resize(struct args *a)
{
    imgtool_resize_options o;
    imgtool_resize_options_init(&o);
    o.format = a->f;
    o.preallocation = a->prealloc;
    if (a->shrink)
        o.flags |= IMGTOOL_RESIZE_SHRINK;
    if (a->nops != 2)
        return usage();
    int rc = imgtool_resize(a->ops[0], strtoull(a->ops[1], NULL, 0), &o);
    if (rc != IMGTOOL_OK)
        return fail("imgtool_resize", rc);
    printf("Image resized.\n");
    return 0;
}

static int do_amend(struct args *a)
{
    imgtool_amend_options o;
    imgtool_amend_options_init(&o);
    o.format = a->f;
    o.options = a->o;
    int rc = imgtool_amend(a->ops[0], &o, NULL, NULL);
    return rc == IMGTOOL_OK ? 0 : fail("imgtool_amend", rc);
}

static int do_snapshot(struct args *a)
{
    imgtool_snapshot_options o;
    imgtool_snapshot_options_init(&o);
    o.format = a->f;
    int rc;
    switch (a->snap_action) {
    case 'c': {
        imgtool_snapshot s = {.struct_size = sizeof s};
        rc = imgtool_snapshot_create(a->ops[0], a->snap_name, &o, &s);
        if (rc == IMGTOOL_OK)
            printf("created snapshot %s '%s'\n", s.id, s.name);
        break;
    }
    case 'a':
        rc = imgtool_snapshot_apply(a->ops[0], a->snap_name, &o);
        break;
    case 'd':
        rc = imgtool_snapshot_delete(a->ops[0], a->snap_name, &o);
        break;
    default:
        return usage();
    }
    return rc == IMGTOOL_OK ? 0 : fail("imgtool_snapshot", rc);
}

static int do_compare(struct args *a)
{
    if (a->nops != 2)
        return usage();
    imgtool_image *i1 = open_ro(a->ops[0], a->f, NULL);
    imgtool_image *i2 = i1 ? open_ro(a->ops[1], a->F, NULL) : NULL;
    if (!i2) {
        imgtool_close(i1);
        return 2;
    }
    imgtool_compare_options o;
    imgtool_compare_report r = {.struct_size = sizeof r};
    struct progress p = {0, 1 /* ignored: compare cannot be cancelled */, 0};
    imgtool_compare_options_init(&o);
    if (a->s)
        o.flags |= IMGTOOL_COMPARE_STRICT;
    int rc = imgtool_compare(i1, i2, &o, &r, NULL, on_progress, &p);
    imgtool_close(i1);
    imgtool_close(i2);
    if (rc != IMGTOOL_OK)
        return fail("imgtool_compare", rc) + 2; /* qemu-img: 3 */
    if (p.bad || p.last != 100.0) {
        fprintf(stderr, "imgops: compare progress ended at %.2f\n", p.last);
        return 5;
    }
    if (r.size_mismatch)
        printf("Warning: Image size mismatch!\n");
    switch (r.result) {
    case IMGTOOL_COMPARE_IDENTICAL:
        printf("Images are identical.\n");
        break;
    case IMGTOOL_COMPARE_CONTENT_MISMATCH:
        printf("Content mismatch at offset %" PRIu64 "!\n", r.offset);
        break;
    case IMGTOOL_COMPARE_SIZE_MISMATCH:
        printf("Strict mode: Image size mismatch!\n");
        break;
    case IMGTOOL_COMPARE_STATUS_MISMATCH:
        printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n", r.offset);
        break;
    }
    return r.exit_code;
}

static int do_measure(struct args *a)
{
    imgtool_measure_options o;
    imgtool_measure_report r = {.struct_size = sizeof r};
    imgtool_image *src = NULL;
    char *json = NULL;
    imgtool_measure_options_init(&o);
    o.out_format = a->O;
    o.options = a->o;
    if (a->have_size)
        o.size = a->size;
    if (a->nops == 1 && !(src = open_ro(a->ops[0], a->f, a->l)))
        return 1;
    int rc = imgtool_measure(&o, src, &r, &json);
    imgtool_close(src);
    if (rc != IMGTOOL_OK)
        return fail("imgtool_measure", rc);
    printf("%s\n", json);
    imgtool_free_string(json);
    return 0;
}

static int do_dd(struct args *a)
{
    imgtool_dd_options o;
    imgtool_dd_options_init(&o);
    o.src_format = a->f;
    o.out_format = a->O;
    if (a->bs)
        o.block_size = a->bs;
    o.count = a->count;
    o.skip = a->skip;
    if (a->nops != 2)
        return usage();
    int rc = imgtool_dd(a->ops[0], a->ops[1], &o);
    return rc == IMGTOOL_OK ? 0 : fail("imgtool_dd", rc);
}

static int do_bench(struct args *a)
{
    imgtool_open_options oo;
    imgtool_bench_options o;
    imgtool_bench_report r = {.struct_size = sizeof r};
    imgtool_image *img = NULL;
    imgtool_open_options_init(&oo);
    oo.format = a->f;
    if (a->w)
        oo.flags |= IMGTOOL_OPEN_WRITABLE;
    int rc = imgtool_open(a->ops[0], &oo, &img);
    if (rc != IMGTOOL_OK)
        return fail("imgtool_open", rc);
    imgtool_bench_options_init(&o);
    if (a->w)
        o.flags |= IMGTOOL_BENCH_WRITE;
    if (a->have_b_count)
        o.count = (uint32_t)a->b_count;
    if (a->have_b_depth)
        o.depth = (uint32_t)a->b_depth;
    if (a->have_b_bufsize)
        o.buffer_size = a->b_bufsize;
    if (a->have_b_pattern)
        o.pattern = (uint8_t)a->b_pattern;
    o.offset = a->b_offset;
    o.flush_interval = (uint32_t)a->b_flush;
    rc = imgtool_bench(img, &o, &r);
    if (rc != IMGTOOL_OK) {
        fail("imgtool_bench", rc); /* before imgtool_close resets the message */
        imgtool_close(img);
        return 1;
    }
    if ((rc = imgtool_close(img)) != IMGTOOL_OK)
        return fail("imgtool_close", rc);
    printf("%" PRIu32 " requests in %.3f seconds\n", r.requests, r.elapsed_ns / 1e9);
    return 0;
}

int main(int argc, char **argv)
{
    struct args a;
    if (argc < 3 || parse(argc, argv, &a) != 0)
        return usage();
    const char *cmd = argv[1];
    if (strcmp(cmd, "measure") != 0 && a.nops < 1)
        return usage();
    if (strcmp(cmd, "commit") == 0)
        return do_commit(&a);
    if (strcmp(cmd, "rebase") == 0)
        return do_rebase(&a);
    if (strcmp(cmd, "resize") == 0)
        return do_resize(&a);
    if (strcmp(cmd, "amend") == 0)
        return do_amend(&a);
    if (strcmp(cmd, "snapshot") == 0)
        return do_snapshot(&a);
    if (strcmp(cmd, "compare") == 0)
        return do_compare(&a);
    if (strcmp(cmd, "measure") == 0)
        return do_measure(&a);
    if (strcmp(cmd, "dd") == 0)
        return do_dd(&a);
    if (strcmp(cmd, "bench") == 0)
        return do_bench(&a);
    return usage();
}
