package imgtool

/*
#include "trampolines.h"
*/
import "C"

import (
	"context"
)

// CommitOptions are the options of Commit (qemu-img commit's flags).
type CommitOptions struct {
	Format string // -f; "" probes
	// Base is the image of the backing chain to commit into (-b), as named
	// in the chain or as a path; "" commits into the immediate backing file.
	// A Base implies Drop.
	Base  string
	Drop  bool   // -d: leave the top image as it is instead of emptying it
	Cache string // -t; "" = "writeback"
}

// Commit writes what the image at path has allocated into its backing file
// and then empties it, as qemu-img commit does. Cancelling ctx (nil: no
// cancellation) stops it at the next progress step; the top image's
// content is unchanged then, though part of it may already be in the base.
func Commit(ctx context.Context, path string, opts CommitOptions, progress func(float64)) error {
	if err := canceled("imgtool_commit", ctx); err != nil {
		return err
	}
	var cs cstrings
	defer cs.free()
	var o C.imgtool_commit_options
	if rc := C.imgtool_commit_options_init(&o); rc != C.IMGTOOL_OK {
		return errorf("imgtool_commit_options_init", Code(rc), "cannot initialise commit options")
	}
	o.format = cs.str(opts.Format)
	o.base = cs.str(opts.Base)
	o.cache = cs.str(opts.Cache)
	if opts.Drop {
		o.flags |= C.IMGTOOL_COMMIT_DROP
	}
	cpath := cs.str(path)
	return withProgress(ctx, "imgtool_commit", progress, func(h C.uintptr_t) C.int {
		return C.imgtool_go_commit(cpath, &o, h)
	})
}

// RebaseOptions are the options of Rebase (qemu-img rebase's flags).
type RebaseOptions struct {
	Format string // -f; "" probes
	// BackingFile is the new backing file as it goes into the header (-b),
	// relative to the image's directory; "" removes the backing file.
	BackingFile   string
	BackingFormat string // -F; "" probes
	Unsafe        bool   // -u: only rewrite the header
	Compress      bool   // -c: write copied clusters compressed
	ForceShare    bool   // -U: open the new backing file without locks
	Cache         string // -t; "" = "writeback"
	BackingCache  string // -T; "" = "writeback"
}

// Rebase points the image at path to another backing file (or none) as
// qemu-img rebase does; in safe mode (the default) the guest-visible
// content stays the same. Cancelling ctx (nil: no cancellation) stops it
// before the header changes.
func Rebase(ctx context.Context, path string, opts RebaseOptions, progress func(float64)) error {
	if err := canceled("imgtool_rebase", ctx); err != nil {
		return err
	}
	var cs cstrings
	defer cs.free()
	var o C.imgtool_rebase_options
	if rc := C.imgtool_rebase_options_init(&o); rc != C.IMGTOOL_OK {
		return errorf("imgtool_rebase_options_init", Code(rc), "cannot initialise rebase options")
	}
	o.format = cs.str(opts.Format)
	// Always a string: "" is meaningful (no backing file).
	o.backing_file = C.CString(opts.BackingFile)
	cs = append(cs, o.backing_file)
	o.backing_format = cs.str(opts.BackingFormat)
	o.cache = cs.str(opts.Cache)
	o.backing_cache = cs.str(opts.BackingCache)
	if opts.Unsafe {
		o.flags |= C.IMGTOOL_REBASE_UNSAFE
	}
	if opts.Compress {
		o.flags |= C.IMGTOOL_REBASE_COMPRESS
	}
	if opts.ForceShare {
		o.flags |= C.IMGTOOL_REBASE_FORCE_SHARE
	}
	cpath := cs.str(path)
	return withProgress(ctx, "imgtool_rebase", progress, func(h C.uintptr_t) C.int {
		return C.imgtool_go_rebase(cpath, &o, h)
	})
}

// ResizeOptions are the options of Resize.
type ResizeOptions struct {
	Format        string // -f; "" probes
	Preallocation string // --preallocation for growing: "off" (""), "metadata", "falloc", "full"
	Shrink        bool   // --shrink: allow making the image smaller (data beyond the end is lost)
	Cache         string // "" = "writeback"
}

// Resize sets the virtual size of the image at path to size bytes, as
// qemu-img resize does; the new area reads as zeros.
func Resize(path string, size int64, opts ResizeOptions) error {
	if size < 0 {
		return errorf("imgtool_resize", CodeInvalid, "New image size must be positive")
	}
	var cs cstrings
	defer cs.free()
	var o C.imgtool_resize_options
	if rc := C.imgtool_resize_options_init(&o); rc != C.IMGTOOL_OK {
		return errorf("imgtool_resize_options_init", Code(rc), "cannot initialise resize options")
	}
	o.format = cs.str(opts.Format)
	o.preallocation = cs.str(opts.Preallocation)
	o.cache = cs.str(opts.Cache)
	if opts.Shrink {
		o.flags |= C.IMGTOOL_RESIZE_SHRINK
	}
	cpath := cs.str(path)
	return call("imgtool_resize", func() C.int { return C.imgtool_resize(cpath, C.uint64_t(size), &o) })
}

// AmendOptions are the options of Amend.
type AmendOptions struct {
	Format string // -f; "" probes
	// Options to change (-o), e.g. {"compat": "0.10"} or
	// {"refcount_bits": "64", "lazy_refcounts": "on"}; required.
	Options map[string]string
	Cache   string // -t; "" = "writeback"
}

// Amend changes format options of the image at path in place, as
// qemu-img amend does. It cannot be cancelled; progress (may be nil) gets
// the percentage done.
func Amend(path string, opts AmendOptions, progress func(float64)) error {
	var cs cstrings
	defer cs.free()
	var o C.imgtool_amend_options
	if rc := C.imgtool_amend_options_init(&o); rc != C.IMGTOOL_OK {
		return errorf("imgtool_amend_options_init", Code(rc), "cannot initialise amend options")
	}
	o.format = cs.str(opts.Format)
	o.options = cs.str(optionString(opts.Options))
	o.cache = cs.str(opts.Cache)
	cpath := cs.str(path)
	return withProgress(nil, "imgtool_amend", progress, func(h C.uintptr_t) C.int {
		return C.imgtool_go_amend(cpath, &o, h)
	})
}

// SnapshotOptions say how the snapshot functions open the image.
type SnapshotOptions struct {
	Format string // -f; "" probes
}

func snapshotOptions(cs *cstrings, opts *SnapshotOptions) (C.imgtool_snapshot_options, error) {
	var o C.imgtool_snapshot_options
	if rc := C.imgtool_snapshot_options_init(&o); rc != C.IMGTOOL_OK {
		return o, errorf("imgtool_snapshot_options_init", Code(rc), "cannot initialise snapshot options")
	}
	if opts != nil {
		o.format = cs.str(opts.Format)
	}
	return o, nil
}

// SnapshotCreate creates an internal snapshot called name of the image at
// path (qemu-img snapshot -c) and returns it. opts may be nil.
func SnapshotCreate(path, name string, opts *SnapshotOptions) (SnapshotInfo, error) {
	var cs cstrings
	defer cs.free()
	o, err := snapshotOptions(&cs, opts)
	if err != nil {
		return SnapshotInfo{}, err
	}
	cpath, cname := cs.str(path), C.CString(name)
	cs = append(cs, cname)
	var s C.imgtool_snapshot
	s.struct_size = C.uint32_t(C.sizeof_imgtool_snapshot)
	err = call("imgtool_snapshot_create", func() C.int { return C.imgtool_snapshot_create(cpath, cname, &o, &s) })
	if err != nil {
		return SnapshotInfo{}, err
	}
	return snapshotFromC(&s), nil
}

// SnapshotApply reverts the image at path to its snapshot name (an ID or
// a name; qemu-img snapshot -a). opts may be nil.
func SnapshotApply(path, name string, opts *SnapshotOptions) error {
	var cs cstrings
	defer cs.free()
	o, err := snapshotOptions(&cs, opts)
	if err != nil {
		return err
	}
	cpath, cname := cs.str(path), C.CString(name)
	cs = append(cs, cname)
	return call("imgtool_snapshot_apply", func() C.int { return C.imgtool_snapshot_apply(cpath, cname, &o) })
}

// SnapshotDelete deletes the first snapshot called name of the image at
// path (qemu-img snapshot -d). opts may be nil.
func SnapshotDelete(path, name string, opts *SnapshotOptions) error {
	var cs cstrings
	defer cs.free()
	o, err := snapshotOptions(&cs, opts)
	if err != nil {
		return err
	}
	cpath, cname := cs.str(path), C.CString(name)
	cs = append(cs, cname)
	return call("imgtool_snapshot_delete", func() C.int { return C.imgtool_snapshot_delete(cpath, cname, &o) })
}
