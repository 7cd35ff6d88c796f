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
