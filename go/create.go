package imgtool

/*
#include <imgtool.h>
*/
import "C"

import (
	"sort"
	"strings"
)

// CreateOptions describe a new image for Create.
type CreateOptions struct {
	Filename string // path of the new file (required); an existing file is replaced
	Format   string // "raw" (default when ""), "qcow2", ...
	// Virtual size in bytes. 0 with a BackingFile takes the backing file's
	// size (qemu-img create without a size).
	Size int64
	// Format options as qemu-img -o, e.g. {"cluster_size": "65536",
	// "lazy_refcounts": "on"}.
	Options       map[string]string
	BackingFile   string // -b; relative to the new image's directory
	BackingFormat string // -F; "" probes it
	UnsafeBacking bool   // -u: do not open the backing file (Size is then required)
}

// optionString renders options as qemu-img's "key=value,..." with commas
// in values doubled, keys sorted for a stable result.
func optionString(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(strings.ReplaceAll(m[k], ",", ",,"))
	}
	return b.String()
}

// Create creates a new image file as qemu-img create does. It does not
// open it.
//
// Errors: ErrInvalid (bad size, unknown format or option), ErrNotSupported,
// ErrNotFound/ErrPermission (directory, backing file), ErrNoSpace, ErrIO.
func Create(opts CreateOptions) error {
	var cs cstrings
	defer cs.free()
	var o C.imgtool_create_options
	if rc := C.imgtool_create_options_init(&o); rc != C.IMGTOOL_OK {
		return errorf("imgtool_create_options_init", Code(rc), "cannot initialise create options")
	}
	if opts.Size < 0 {
		return errorf("imgtool_create", CodeInvalid, "imgtool: negative size %d", opts.Size)
	}
	o.filename = cs.str(opts.Filename)
	o.format = cs.str(opts.Format)
	o.options = cs.str(optionString(opts.Options))
	o.backing_file = cs.str(opts.BackingFile)
	o.backing_format = cs.str(opts.BackingFormat)
	if opts.Size > 0 || opts.BackingFile == "" {
		o.size = C.uint64_t(opts.Size)
	}
	if opts.UnsafeBacking {
		o.flags |= C.IMGTOOL_CREATE_UNSAFE_BACKING
	}
	return call("imgtool_create", func() C.int { return C.imgtool_create(&o) })
}

// DdOptions are the options of Dd (qemu-img dd's operands and flags).
type DdOptions struct {
	Format     string // -f: input format; "" probes
	OutFormat  string // -O; "" = "raw"
	BlockSize  int64  // bs=; 0 = 512
	Count      int64  // count=: blocks to copy; 0 = to the end (see CountZero)
	CountZero  bool   // count=0: copy nothing (Count is ignored)
	Skip       int64  // skip=: input blocks to skip
	ForceShare bool   // -U: open the input without its lock
	KeySecret  string // ID of a secret (SetSecret) for an encrypted input
}

// Dd creates output and copies into it the input's bytes from Skip
// blocks on, up to Count blocks, as qemu-img dd if=input of=output does.
// A Skip past the end of the input is no error (as in qemu-img): the
// output is empty and a notice goes to the notice handler.
func Dd(input, output string, opts DdOptions) error {
	if opts.BlockSize < 0 || opts.Skip < 0 {
		return errorf("imgtool_dd", CodeInvalid, "imgtool: negative block size or skip")
	}
	var cs cstrings
	defer cs.free()
	var o C.imgtool_dd_options
	if rc := C.imgtool_dd_options_init(&o); rc != C.IMGTOOL_OK {
		return errorf("imgtool_dd_options_init", Code(rc), "cannot initialise dd options")
	}
	o.src_format = cs.str(opts.Format)
	o.out_format = cs.str(opts.OutFormat)
	if opts.BlockSize > 0 {
		o.block_size = C.uint64_t(opts.BlockSize)
	}
	if opts.CountZero {
		o.count = 0
	} else if opts.Count > 0 {
		o.count = C.uint64_t(opts.Count)
	}
	o.skip = C.uint64_t(opts.Skip)
	o.key_secret = cs.str(opts.KeySecret)
	if opts.ForceShare {
		o.flags |= C.IMGTOOL_DD_FORCE_SHARE
	}
	cin, cout := cs.str(input), cs.str(output)
	return call("imgtool_dd", func() C.int { return C.imgtool_dd(cin, cout, &o) })
}
