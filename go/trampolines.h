/*
 * C glue between libimgtool's callbacks and Go (trampolines.c): the user
 * pointer of a callback carries a runtime/cgo.Handle, which the
 * trampolines hand to the exported Go functions as an integer, so no Go
 * code turns an integer into a pointer.
 */
#ifndef IMGTOOL_GO_TRAMPOLINES_H
#define IMGTOOL_GO_TRAMPOLINES_H

#include <imgtool.h>
#include <stdint.h>
#include <stdlib.h>

int imgtool_go_convert(const char *const *srcs, size_t nsrcs, const char *dst,
                       const imgtool_convert_options *opts, uintptr_t progress);
int imgtool_go_check(const char *path, imgtool_check_options *o, imgtool_check_report *report,
                     char **json, uintptr_t log);
int imgtool_go_commit(const char *path, const imgtool_commit_options *o, uintptr_t progress);
int imgtool_go_rebase(const char *path, const imgtool_rebase_options *o, uintptr_t progress);
int imgtool_go_amend(const char *path, const imgtool_amend_options *o, uintptr_t progress);
int imgtool_go_compare(imgtool_image *a, imgtool_image *b, const imgtool_compare_options *o,
                       imgtool_compare_report *report, uintptr_t progress);
void imgtool_go_set_notice_handler(uintptr_t h);

#endif
