/*
 * imgconv - convert images with libimgtool, reporting progress.
 *
 *   imgconv [-f FMT] [-O FMT] [-o OPTS] [-c] [-m N] [--bitmaps]
 *           [--skip-broken-bitmaps] [--cancel-at PCT] [--pause-at PCT] SRC... DST
 *
 * Converts SRC... (concatenated) into DST like `qemu-img convert`, printing
 * progress to stderr and checking that it only grows and ends at 100%.
 * With --cancel-at PCT the callback cancels once progress reaches PCT
 * (0 = at the first call): imgconv then expects IMGTOOL_ECANCELED and that
 * DST was removed again, and exits 0 when both hold.
 *
 * Ctrl-C (SIGINT) or SIGTERM cancels the conversion the same way: the
 * signal handler only sets a flag, the progress callback returns non-zero
 * when it sees it, imgtool_convert removes the partial DST and returns
 * IMGTOOL_ECANCELED, and imgconv exits 130 (128 + SIGINT) after checking
 * DST is gone. --pause-at PCT makes the callback wait (up to 30 s) once
 * progress reaches PCT, printing "imgconv: paused" to stderr, so a test can
 * deliver the signal at a known point.
 */
#define _POSIX_C_SOURCE 200809L

#include <imgtool.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct progress {
    double last;
    unsigned calls;
    double cancel_at; /* < 0: never */
    double pause_at;  /* < 0: never */
    int bad;
};

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    interrupted = sig;
}

static int on_progress(double percent, void *user)
{
    struct progress *p = user;
    if (percent < p->last || percent > 100.0) {
        fprintf(stderr, "\nimgconv: progress went from %.2f to %.2f\n", p->last, percent);
        p->bad = 1;
    }
    p->last = percent;
    p->calls++;
    fprintf(stderr, "\r    (%6.2f/100%%)", percent);
    if (p->pause_at >= 0 && percent >= p->pause_at) {
        p->pause_at = -1;
        fprintf(stderr, "\nimgconv: paused at %.2f%%\n", percent);
        struct timespec ts = {0, 10 * 1000 * 1000};
        for (int i = 0; i < 3000 && !interrupted; i++)
            nanosleep(&ts, NULL);
    }
    /* Any non-zero return cancels. The callback may run on a libimgtool
     * worker thread; a sig_atomic_t flag is safe to read from any thread. */
    if (interrupted)
        return 1;
    return p->cancel_at >= 0 && percent >= p->cancel_at;
}

static void usage(void)
{
    fprintf(stderr, "usage: imgconv [-f FMT] [-O FMT] [-o OPTS] [-c] [-m N] [--cancel-at PCT] "
                    "[--pause-at PCT] SRC... DST\n");
    exit(2);
}

int main(int argc, char **argv)
{
    imgtool_convert_options o;
    struct progress p = {0.0, 0, -1.0, -1.0, 0};
    const char **srcs = calloc((size_t)argc, sizeof *srcs);
    size_t n = 0;
    int rc;

    if (!srcs)
        return 1;
    if ((rc = imgtool_convert_options_init(&o)) != IMGTOOL_OK)
        return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-f") == 0 && i + 1 < argc)
            o.src_format = argv[++i];
        else if (strcmp(a, "-O") == 0 && i + 1 < argc)
            o.out_format = argv[++i];
        else if (strcmp(a, "-o") == 0 && i + 1 < argc)
            o.options = argv[++i];
        else if (strcmp(a, "-c") == 0)
            o.flags |= IMGTOOL_CONVERT_COMPRESS;
        else if (strcmp(a, "--bitmaps") == 0)
            o.flags |= IMGTOOL_CONVERT_BITMAPS;
        else if (strcmp(a, "--skip-broken-bitmaps") == 0)
            o.flags |= IMGTOOL_CONVERT_SKIP_BROKEN_BITMAPS;
        else if (strcmp(a, "-m") == 0 && i + 1 < argc)
            o.num_workers = (uint32_t)strtoul(argv[++i], NULL, 0);
        else if (strcmp(a, "--cancel-at") == 0 && i + 1 < argc)
            p.cancel_at = strtod(argv[++i], NULL);
        else if (strcmp(a, "--pause-at") == 0 && i + 1 < argc)
            p.pause_at = strtod(argv[++i], NULL);
        else if (a[0] == '-')
            usage();
        else
            srcs[n++] = a;
    }
    if (n < 2)
        usage();
    const char *dst = srcs[--n];

    /* Ctrl-C cancels through the progress callback. SA_RESTART: system
     * calls the library is in when the signal arrives resume instead of
     * failing with EINTR. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    rc = imgtool_convert(srcs, n, dst, &o, on_progress, &p);
    fputc('\n', stderr);
    free(srcs);
    if (interrupted) {
        if (rc != IMGTOOL_ECANCELED) {
            fprintf(stderr, "imgconv: interrupted, but imgtool_convert returned %d (%s)\n", rc,
                    imgtool_last_error());
            return 1;
        }
        if (access(dst, F_OK) == 0) {
            fprintf(stderr, "imgconv: interrupted, but %s was left behind\n", dst);
            return 1;
        }
        fprintf(stderr, "imgconv: interrupted at %.2f%%; %s removed\n", p.last, dst);
        return 128 + (int)interrupted;
    }
    if (rc == IMGTOOL_ENOTSUP) {
        fprintf(stderr, "imgconv: imgtool_convert failed: %s [%s]\n", imgtool_last_error(),
                imgtool_strerror(rc));
        return 77;
    }
    if (p.cancel_at >= 0) {
        if (rc != IMGTOOL_ECANCELED) {
            fprintf(stderr, "imgconv: expected IMGTOOL_ECANCELED, got %d (%s)\n", rc,
                    imgtool_last_error());
            return 1;
        }
        if (access(dst, F_OK) == 0) {
            fprintf(stderr, "imgconv: cancelled, but %s was left behind\n", dst);
            return 1;
        }
        printf("%s: cancelled at %.2f%% after %u callback(s); output removed\n", dst, p.last,
               p.calls);
        return 0;
    }
    if (rc != IMGTOOL_OK) {
        fprintf(stderr, "imgconv: imgtool_convert failed: %s [%s]\n", imgtool_last_error(),
                imgtool_strerror(rc));
        return 1;
    }
    if (p.bad || p.calls == 0 || p.last != 100.0) {
        fprintf(stderr, "imgconv: progress ended at %.2f after %u calls\n", p.last, p.calls);
        return 1;
    }
    printf("%s: converted from %zu source(s), %u progress callbacks\n", dst, n, p.calls);
    return 0;
}
