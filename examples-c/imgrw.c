/*
 * imgrw - read, verify and write disk images through libimgtool.
 *
 *   imgrw --qemu-io
 *       Print the qemu-io commands that write the known test pattern
 *       (one per line) into a 16 MiB image.
 *
 *   imgrw [-f FMT] [-o OPTS] [-b] [-n COUNT] [-t THREADS] [-s SEED] SRC NEW SHADOW
 *       1. Open SRC (an image made by qemu-img + the qemu-io commands above)
 *          and check that it reads back exactly as the known pattern, and
 *          that every extent block status calls "not data" reads as zeros.
 *       2. Create NEW with imgtool_create (format FMT, default qcow2,
 *          creation options OPTS; with -b as an overlay backed by SRC).
 *       3. Write COUNT random chunks (random sizes, unaligned, many crossing
 *          cluster boundaries) from THREADS threads sharing one handle, and
 *          the same bytes into an in-memory shadow; one in ten is an
 *          imgtool_write_zeroes and one in ten an imgtool_discard of whole
 *          64 KiB blocks (both read back as zeros).
 *       4. Verify NEW against the shadow, flush, close, reopen read-only and
 *          verify again; then write the shadow to the raw file SHADOW.
 *     The test script then runs `qemu-img check NEW` and
 *     `qemu-img compare NEW SHADOW`.
 *
 * Exit status: 0 success, 1 failure, 77 (skip) when the library reports the
 * format as unsupported (IMGTOOL_ENOTSUP on open/create).
 */
#define _XOPEN_SOURCE 700

#include <imgtool.h>

#include <inttypes.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXIT_SKIP 77
#define KNOWN_SIZE (16u << 20)

static const char *prog = "imgrw";

/* One write of the known pattern: 'P' fills with a byte, 'z' writes zeros. */
struct known_write {
    char kind;
    unsigned pattern;
    uint64_t offset;
    uint64_t length;
};

static const struct known_write known[] = {
    {'P', 0xaa, 0, 65536},                 /* one whole 64 KiB cluster */
    {'P', 0x55, 1048576, 4096},            /* a 4 KiB block */
    {'P', 0x11, 65535, 3},                 /* unaligned, across a cluster boundary */
    {'P', 0xc3, 3145727, 131074},          /* unaligned, spans three clusters */
    {'z', 0, 4096, 4096},                  /* zeros inside allocated data */
    {'P', 0x3c, 5242980, 200000},          /* unaligned multi-cluster run */
    {'z', 0, 5308416, 65536},              /* a whole zero cluster inside it */
    {'P', 0x7e, KNOWN_SIZE - 512, 512},    /* the last sector */
};
#define NKNOWN (sizeof known / sizeof known[0])

static void die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* Report a failed libimgtool call; ENOTSUP on open/create means "skip". */
static void fail(const char *what, int rc, int skip_if_unsupported)
{
    fprintf(stderr, "%s: %s failed: %s [%s, errno %d]\n", prog, what, imgtool_last_error(),
            imgtool_strerror(rc), imgtool_last_errno());
    exit(skip_if_unsupported && rc == IMGTOOL_ENOTSUP ? EXIT_SKIP : 1);
}

#define CHECK(call)                                                                    \
    do {                                                                               \
        int rc_ = (call);                                                              \
        if (rc_ != IMGTOOL_OK)                                                         \
            fail(#call, rc_, 0);                                                       \
    } while (0)

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p)
        die("out of memory (%zu bytes)", n);
    return p;
}

/* splitmix64: small, deterministic, good enough for test data. */
static uint64_t next_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static imgtool_image *open_image(const char *path, const char *format, uint32_t flags)
{
    imgtool_open_options o;
    imgtool_image *img = NULL;
    CHECK(imgtool_open_options_init(&o));
    o.flags = flags;
    o.format = format;
    int rc = imgtool_open(path, &o, &img);
    if (rc != IMGTOOL_OK)
        fail("imgtool_open", rc, 1);
    return img;
}

/* Read the whole image in odd-sized pieces and compare with `expect`. */
static void verify_contents(imgtool_image *img, const uint8_t *expect, uint64_t size,
                            const char *name)
{
    const size_t piece = 100003; /* prime: reads start at every alignment */
    uint8_t *buf = xmalloc(piece);
    for (uint64_t off = 0; off < size; off += piece) {
        size_t n = size - off < piece ? (size_t)(size - off) : piece;
        CHECK(imgtool_read(img, buf, n, off));
        if (memcmp(buf, expect + off, n) != 0) {
            for (size_t i = 0; i < n; i++)
                if (buf[i] != expect[off + i])
                    die("%s: byte at offset %" PRIu64 " is 0x%02x, expected 0x%02x", name,
                        off + i, buf[i], expect[off + i]);
        }
    }
    free(buf);
}

static int all_zero(const uint8_t *p, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/*
 * Walk block status over the whole image: extents must tile it exactly,
 * and whatever is not reported as data must read as zeros. Returns the
 * deepest layer seen.
 */
static uint32_t verify_block_status(imgtool_image *img, const uint8_t *expect, uint64_t size,
                                    const char *name)
{
    uint64_t off = 0, data = 0;
    uint32_t deepest = 0;
    while (off < size) {
        imgtool_extent e;
        CHECK(imgtool_block_status(img, off, size - off, &e));
        if (e.length == 0 || e.length > size - off)
            die("%s: block status at %" PRIu64 " returned length %" PRIu64, name, off,
                e.length);
        if (!(e.flags & IMGTOOL_EXTENT_DATA) && !all_zero(expect + off, e.length))
            die("%s: [%" PRIu64 ", +%" PRIu64 ") is reported without data but holds data",
                name, off, e.length);
        if ((e.flags & IMGTOOL_EXTENT_ZERO) && !all_zero(expect + off, e.length))
            die("%s: [%" PRIu64 ", +%" PRIu64 ") is reported as zero but is not", name, off,
                e.length);
        if (e.flags & IMGTOOL_EXTENT_DATA)
            data += e.length;
        if (e.depth > deepest)
            deepest = e.depth;
        off += e.length;
    }
    if (data == 0 && !all_zero(expect, size))
        die("%s: block status reports no data at all", name);
    return deepest;
}

static void check_known_image(const char *src, uint8_t *expect)
{
    memset(expect, 0, KNOWN_SIZE);
    for (size_t i = 0; i < NKNOWN; i++)
        memset(expect + known[i].offset, known[i].kind == 'P' ? (int)known[i].pattern : 0,
               known[i].length);

    imgtool_image *img = open_image(src, NULL, 0);
    uint64_t size = 0;
    CHECK(imgtool_get_size(img, &size));
    if (size != KNOWN_SIZE)
        die("%s: size %" PRIu64 ", expected %u", src, size, KNOWN_SIZE);
    verify_contents(img, expect, size, src);
    verify_block_status(img, expect, size, src);

    /* A read past the end is refused, not short. */
    uint8_t b[2];
    int rc = imgtool_read(img, b, sizeof b, size - 1);
    if (rc != IMGTOOL_ERANGE)
        die("read across the end returned %d, expected IMGTOOL_ERANGE", rc);
    CHECK(imgtool_close(img));
    printf("%s: verified %zu known writes and block status\n", src, NKNOWN);
}

struct writer {
    imgtool_image *img;
    uint8_t *shadow;
    uint64_t lo, hi; /* this thread's stripe [lo, hi) */
    unsigned count;
    uint64_t seed;
    uint64_t cluster;
    uint64_t bytes;
    char error[512];
};

static uint64_t random_length(uint64_t *rs)
{
    switch (next_rand(rs) % 4) {
    case 0:
        return 1 + next_rand(rs) % 512;    /* tiny, sub-sector */
    case 1:
        return 1 + next_rand(rs) % 8192;   /* around a block */
    case 2:
        return 1 + next_rand(rs) % 70000;  /* around a cluster */
    default:
        return 1 + next_rand(rs) % 300000; /* several clusters */
    }
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    uint64_t rs = w->seed;
    uint64_t span = w->hi - w->lo;
    uint8_t *buf = malloc(300000);
    if (!buf) {
        snprintf(w->error, sizeof w->error, "out of memory");
        return NULL;
    }
    for (unsigned i = 0; i < w->count; i++) {
        uint64_t len = random_length(&rs);
        if (len > span)
            len = span;
        uint64_t off;
        if (next_rand(&rs) % 3 == 0) {
            /* Start just before a cluster boundary, so the write crosses it. */
            uint64_t b = w->lo + w->cluster + next_rand(&rs) % span;
            b -= b % w->cluster;
            uint64_t back = 1 + next_rand(&rs) % 600;
            off = b > w->lo + back ? b - back : w->lo;
        } else {
            off = w->lo + next_rand(&rs) % span;
        }
        if (off + len > w->hi)
            off = w->hi - len;
        unsigned op = (unsigned)(next_rand(&rs) % 10);
        int rc;
        const char *what;
        if (op == 0) {
            /* Zeros without a buffer; sometimes letting the format unmap. */
            uint32_t flags = next_rand(&rs) % 2 ? IMGTOOL_ZERO_MAY_UNMAP : 0;
            what = "imgtool_write_zeroes";
            rc = imgtool_write_zeroes(w->img, off, len, flags);
            if (rc == IMGTOOL_OK)
                memset(w->shadow + off, 0, len);
        } else if (op == 1) {
            /* Discard whole 64 KiB blocks of this stripe only (a discard
             * frees whole clusters; partial ones keep their data). */
            uint64_t a = (off + 65535) / 65536 * 65536, b = (off + len) / 65536 * 65536;
            uint64_t lo = (w->lo + 65535) / 65536 * 65536, hi = w->hi / 65536 * 65536;
            if (a < lo)
                a = lo;
            if (b > hi)
                b = hi;
            if (b <= a)
                continue;
            off = a;
            len = b - a;
            what = "imgtool_discard";
            rc = imgtool_discard(w->img, off, len);
            if (rc == IMGTOOL_OK)
                memset(w->shadow + off, 0, len);
        } else {
            for (uint64_t j = 0; j < len; j++)
                buf[j] = (uint8_t)(next_rand(&rs) | 1); /* never 0: holes show */
            what = "imgtool_write";
            rc = imgtool_write(w->img, buf, len, off);
            if (rc == IMGTOOL_OK)
                memcpy(w->shadow + off, buf, len);
        }
        if (rc != IMGTOOL_OK) {
            snprintf(w->error, sizeof w->error, "%s(%" PRIu64 ", +%" PRIu64 "): %s [%s]", what,
                     off, len, imgtool_last_error(), imgtool_strerror(rc));
            break;
        }
        w->bytes += len;
    }
    free(buf);
    return NULL;
}

static void write_shadow(const char *path, const uint8_t *data, uint64_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        die("cannot create %s", path);
    if (fwrite(data, 1, size, f) != size || fclose(f) != 0)
        die("cannot write %s", path);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: %s --qemu-io\n"
            "       %s [-f FMT] [-o OPTS] [-b] [-n COUNT] [-t THREADS] [-s SEED] SRC NEW SHADOW\n",
            prog, prog);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *format = "qcow2", *options = NULL;
    unsigned count = 400, nthreads = 1;
    uint64_t seed = 1;
    int overlay = 0, opt;

    if (argc == 2 && strcmp(argv[1], "--qemu-io") == 0) {
        for (size_t i = 0; i < NKNOWN; i++) {
            if (known[i].kind == 'P')
                printf("write -P 0x%02x %" PRIu64 " %" PRIu64 "\n", known[i].pattern,
                       known[i].offset, known[i].length);
            else
                printf("write -z %" PRIu64 " %" PRIu64 "\n", known[i].offset, known[i].length);
        }
        return 0;
    }
    while ((opt = getopt(argc, argv, "f:o:bn:t:s:")) != -1) {
        switch (opt) {
        case 'f': format = optarg; break;
        case 'o': options = optarg; break;
        case 'b': overlay = 1; break;
        case 'n': count = (unsigned)strtoul(optarg, NULL, 0); break;
        case 't': nthreads = (unsigned)strtoul(optarg, NULL, 0); break;
        case 's': seed = strtoull(optarg, NULL, 0); break;
        default: usage();
        }
    }
    if (argc - optind != 3 || nthreads < 1 || nthreads > 64)
        usage();
    const char *src = argv[optind], *dst = argv[optind + 1], *shadow_path = argv[optind + 2];

    if (strcmp(imgtool_version(), IMGTOOL_VERSION_STRING) != 0)
        die("header is %s but the library is %s", IMGTOOL_VERSION_STRING, imgtool_version());

    /* 1. The image qemu made. */
    uint8_t *expect = xmalloc(KNOWN_SIZE);
    check_known_image(src, expect);

    /* 2. A new image. An overlay takes its size from the backing file. */
    char *abs_src = realpath(src, NULL);
    if (!abs_src)
        die("realpath(%s) failed", src);
    imgtool_create_options c;
    CHECK(imgtool_create_options_init(&c));
    c.format = format;
    c.filename = dst;
    c.options = options;
    if (overlay) {
        c.backing_file = abs_src;
        c.size = IMGTOOL_SIZE_DEFAULT;
    } else {
        c.size = KNOWN_SIZE;
    }
    int rc = imgtool_create(&c);
    free(abs_src);
    if (rc != IMGTOOL_OK)
        fail("imgtool_create", rc, 1);

    /* 3. Random writes from several threads through one handle. */
    uint8_t *shadow = xmalloc(KNOWN_SIZE);
    if (overlay)
        memcpy(shadow, expect, KNOWN_SIZE);
    imgtool_image *img = open_image(dst, format, IMGTOOL_OPEN_WRITABLE);
    uint64_t size = 0;
    CHECK(imgtool_get_size(img, &size));
    if (size != KNOWN_SIZE)
        die("%s: size %" PRIu64 ", expected %u", dst, size, KNOWN_SIZE);

    struct writer *ws = xmalloc(nthreads * sizeof *ws);
    pthread_t *tids = xmalloc(nthreads * sizeof *tids);
    /* Stripes deliberately not cluster-aligned: neighbouring threads write
     * different bytes of the same cluster at the same time. */
    uint64_t stripe = size / nthreads;
    for (unsigned t = 0; t < nthreads; t++) {
        ws[t] = (struct writer){
            .img = img,
            .shadow = shadow,
            .lo = t * stripe,
            .hi = t + 1 == nthreads ? size : (t + 1) * stripe,
            .count = (count + nthreads - 1) / nthreads,
            .seed = seed * 1000003u + t,
            .cluster = t % 2 ? 4096 : 65536,
        };
        if (pthread_create(&tids[t], NULL, writer_main, &ws[t]) != 0)
            die("pthread_create failed");
    }
    uint64_t total = 0;
    unsigned writes = 0;
    int bad = 0;
    for (unsigned t = 0; t < nthreads; t++) {
        pthread_join(tids[t], NULL);
        if (ws[t].error[0]) {
            fprintf(stderr, "%s: thread %u: %s\n", prog, t, ws[t].error);
            bad = 1;
        }
        total += ws[t].bytes;
        writes += ws[t].count;
    }
    free(ws);
    free(tids);
    if (bad)
        exit(1);

    /* 4. Verify while open, after flush, and after reopening. */
    verify_contents(img, shadow, size, dst);
    CHECK(imgtool_flush(img));
    CHECK(imgtool_close(img));

    img = open_image(dst, format, 0);
    verify_contents(img, shadow, size, dst);
    uint32_t deepest = verify_block_status(img, shadow, size, dst);
    if (overlay && deepest < 1)
        die("%s: overlay, but block status never reached the backing file", dst);
    CHECK(imgtool_close(img));

    write_shadow(shadow_path, shadow, size);
    printf("%s: %u random writes (%" PRIu64 " bytes) from %u thread(s) verified%s\n", dst,
           writes, total, nthreads, overlay ? " (overlay)" : "");
    free(shadow);
    free(expect);
    return 0;
}
