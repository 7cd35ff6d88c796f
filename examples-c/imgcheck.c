/*
 * imgcheck - check (and repair) an image with libimgtool.
 *
 *   imgcheck [-f FMT] [-r leaks|all] [-U] [--json] IMAGE
 *
 * Runs imgtool_check and prints either the `qemu-img check --output=json`
 * document (--json) or each finding followed by a one-line summary of the
 * report's counts. Exits with qemu-img check's status for the result:
 * 0 clean, 1 check errors, 2 corruptions, 3 only leaks; 63 when the format
 * has no check (IMGTOOL_ENOTSUP, as qemu-img); 4 on any other failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <imgtool.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static void print_finding(const char *line, void *user)
{
    unsigned *n = user;
    (*n)++;
    fprintf(stderr, "%s\n", line);
}

static int usage(void)
{
    fprintf(stderr, "usage: imgcheck [-f FMT] [-r leaks|all] [-U] [--json] IMAGE\n");
    return 4;
}

int main(int argc, char **argv)
{
    imgtool_check_options o;
    imgtool_check_report r = {.struct_size = sizeof r};
    const char *path = NULL;
    char *json = NULL;
    unsigned findings = 0;
    int want_json = 0;

    if (imgtool_check_options_init(&o) != IMGTOOL_OK)
        return 4;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-f") == 0 && i + 1 < argc)
            o.format = argv[++i];
        else if (strcmp(argv[i], "-r") == 0 && i + 1 < argc) {
            const char *m = argv[++i];
            if (strcmp(m, "leaks") == 0)
                o.repair = IMGTOOL_REPAIR_LEAKS;
            else if (strcmp(m, "all") == 0)
                o.repair = IMGTOOL_REPAIR_ALL;
            else
                return usage();
        } else if (strcmp(argv[i], "-U") == 0)
            o.flags |= IMGTOOL_CHECK_FORCE_SHARE;
        else if (strcmp(argv[i], "--json") == 0)
            want_json = 1;
        else if (!path && argv[i][0] != '-')
            path = argv[i];
        else
            return usage();
    }
    if (!path)
        return usage();
    o.log = print_finding;
    o.log_user = &findings;

    int rc = imgtool_check(path, &o, &r, want_json ? &json : NULL, NULL, NULL);
    if (rc != IMGTOOL_OK) {
        fprintf(stderr, "imgcheck: %s [%s]\n", imgtool_last_error(), imgtool_strerror(rc));
        return rc == IMGTOOL_ENOTSUP ? 63 : 4;
    }
    if (want_json) {
        printf("%s\n", json);
        imgtool_free_string(json);
    } else {
        printf("%s: %u finding(s); corruptions %" PRIu64 ", leaks %" PRIu64
               ", check errors %" PRIu64 ", fixed %" PRIu64 "+%" PRIu64 "%s; %" PRIu64
               "/%" PRIu64 " clusters allocated\n",
               path, findings, r.corruptions, r.leaks, r.check_errors, r.corruptions_fixed,
               r.leaks_fixed, r.repaired ? " (repaired)" : "", r.allocated_clusters,
               r.total_clusters);
    }
    return r.exit_code;
}
