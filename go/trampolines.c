// C glue between libimgtool's callbacks and Go; see trampolines.h.

#include "trampolines.h"

#include "_cgo_export.h"

static int imgtool_go_progress(double percent, void *user)
{
    return imgtoolGoProgress(percent, (uintptr_t)user);
}

static void imgtool_go_log(const char *line, void *user)
{
    imgtoolGoLog((char *)line, (uintptr_t)user);
}

int imgtool_go_convert(const char *const *srcs, size_t nsrcs, const char *dst,
                       const imgtool_convert_options *opts, uintptr_t progress)
{
    return imgtool_convert(srcs, nsrcs, dst, opts, progress ? imgtool_go_progress : NULL,
                           (void *)progress);
}

int imgtool_go_check(const char *path, imgtool_check_options *o, imgtool_check_report *report,
                     char **json, uintptr_t log)
{
    o->log = log ? imgtool_go_log : NULL;
    o->log_user = (void *)log;
    return imgtool_check(path, o, report, json, NULL, NULL);
}

int imgtool_go_commit(const char *path, const imgtool_commit_options *o, uintptr_t progress)
{
    return imgtool_commit(path, o, progress ? imgtool_go_progress : NULL, (void *)progress);
}

int imgtool_go_rebase(const char *path, const imgtool_rebase_options *o, uintptr_t progress)
{
    return imgtool_rebase(path, o, progress ? imgtool_go_progress : NULL, (void *)progress);
}

int imgtool_go_amend(const char *path, const imgtool_amend_options *o, uintptr_t progress)
{
    return imgtool_amend(path, o, progress ? imgtool_go_progress : NULL, (void *)progress);
}

int imgtool_go_compare(imgtool_image *a, imgtool_image *b, const imgtool_compare_options *o,
                       imgtool_compare_report *report, uintptr_t progress)
{
    return imgtool_compare(a, b, o, report, NULL, progress ? imgtool_go_progress : NULL,
                           (void *)progress);
}

void imgtool_go_set_notice_handler(uintptr_t h)
{
    imgtool_set_notice_handler(h ? imgtool_go_log : NULL, (void *)h);
}
