package imgtool

/*
#include "trampolines.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"runtime/cgo"
	"sync"
	"unsafe"
)

// ConvertOptions are the options of Convert (qemu-img convert's flags).
// The zero value converts to raw with qemu-img's defaults.
type ConvertOptions struct {
	SrcFormat     string            // -f; "" probes each source
	OutFormat     string            // -O; "" = "raw"
	Options       map[string]string // -o, creation options of the target
	Compress      bool              // -c (qcow2 targets)
	NoCreate      bool              // -n: write into an existing target
	ForceShare    bool              // -U: take no locks on the sources
	OutOfOrder    bool              // -W
	BackingFile   string            // -B: the target's backing file
	BackingFormat string            // -F
	TargetCache   string            // -t; "" = "unsafe"
	SourceCache   string            // -T; "" = "writeback"
	// -S in bytes: runs of zeros at least this long become holes. 0 means
	// the default (4096); a negative value writes every byte (-S 0).
	SparseSize int64
	Workers    int    // -m, 1..16; 0 = the default (8)
	Snapshot   string // -l: convert this internal snapshot (ID or name) of the single source
	// Secret ids (see SetSecret): SourceKeySecret unlocks encrypted
	// sources; TargetKeySecret an existing encrypted target (NoCreate). A
	// created target takes its secret from Options["encrypt.key-secret"].
	SourceKeySecret string
	TargetKeySecret string
	// --bitmaps: copy the single qcow2 source's persistent bitmaps into the
	// qcow2 target; --skip-broken-bitmaps leaves out inconsistent ones.
	Bitmaps           bool
	SkipBrokenBitmaps bool
}

// Convert copies the sources, concatenated, into a new image dst, as
// qemu-img convert does. progress (may be nil) is called with the
// percentage done, possibly on another thread but never concurrently.
//
// Cancelling ctx stops the conversion at its next progress step: the
// partial target is removed and the error matches both ErrCanceled and
// ctx.Err() (context.Canceled or context.DeadlineExceeded). A panic in
// progress also cancels, and is re-raised once the library returned.
func Convert(ctx context.Context, srcs []string, dst string, opts ConvertOptions, progress func(float64)) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if len(srcs) == 0 {
		return errorf("imgtool_convert", CodeInvalid, "imgtool: no source images")
	}
	if err := canceled("imgtool_convert", ctx); err != nil {
		return err
	}
	var cs cstrings
	defer cs.free()
	var o C.imgtool_convert_options
	if rc := C.imgtool_convert_options_init(&o); rc != C.IMGTOOL_OK {
		return errorf("imgtool_convert_options_init", Code(rc), "cannot initialise convert options")
	}
	o.src_format = cs.str(opts.SrcFormat)
	o.out_format = cs.str(opts.OutFormat)
	o.options = cs.str(optionString(opts.Options))
	o.backing_file = cs.str(opts.BackingFile)
	o.backing_format = cs.str(opts.BackingFormat)
	o.target_cache = cs.str(opts.TargetCache)
	o.source_cache = cs.str(opts.SourceCache)
	o.snapshot = cs.str(opts.Snapshot)
	o.source_key_secret = cs.str(opts.SourceKeySecret)
	o.target_key_secret = cs.str(opts.TargetKeySecret)
	if opts.Compress {
		o.flags |= C.IMGTOOL_CONVERT_COMPRESS
	}
	if opts.NoCreate {
		o.flags |= C.IMGTOOL_CONVERT_NO_CREATE
	}
	if opts.ForceShare {
		o.flags |= C.IMGTOOL_CONVERT_FORCE_SHARE
	}
	if opts.OutOfOrder {
		o.flags |= C.IMGTOOL_CONVERT_OUT_OF_ORDER
	}
	if opts.Bitmaps {
		o.flags |= C.IMGTOOL_CONVERT_BITMAPS
	}
	if opts.SkipBrokenBitmaps {
		o.flags |= C.IMGTOOL_CONVERT_SKIP_BROKEN_BITMAPS
	}
	switch {
	case opts.SparseSize < 0:
		o.sparse_size = 0
	case opts.SparseSize > 0:
		o.sparse_size = C.uint64_t(opts.SparseSize)
	}
	if opts.Workers != 0 {
		if opts.Workers < 0 || opts.Workers > 16 {
			return errorf("imgtool_convert", CodeInvalid,
				"Invalid number of coroutines. Allowed number of coroutines is between 1 and 16")
		}
		o.num_workers = C.uint32_t(opts.Workers)
	}
	// The source list lives in C memory: C must not keep Go pointers to
	// memory holding Go pointers.
	mem := C.malloc(C.size_t(len(srcs)) * C.size_t(unsafe.Sizeof((*C.char)(nil))))
	defer C.free(mem)
	list := unsafe.Slice((**C.char)(mem), len(srcs))
	for i, s := range srcs {
		list[i] = C.CString(s)
		cs = append(cs, list[i])
	}
	cdst := cs.str(dst)

	return withProgress(ctx, "imgtool_convert", progress, func(h C.uintptr_t) C.int {
		return C.imgtool_go_convert(&list[0], C.size_t(len(srcs)), cdst, &o, h)
	})
}

// withProgress runs a long C operation with a progress callback that also
// watches ctx (nil: no cancellation), and turns a cancellation caused by
// ctx into an error matching ctx.Err() too. A panic in progress is
// re-raised here, after the C call returned.
func withProgress(ctx context.Context, op string, progress func(float64), run func(h C.uintptr_t) C.int) error {
	st := &progressState{ctx: ctx, fn: progress}
	var h cgo.Handle
	if progress != nil || (ctx != nil && ctx.Done() != nil) {
		h = cgo.NewHandle(st)
		defer h.Delete()
	}
	err := call(op, func() C.int { return run(C.uintptr_t(h)) })
	st.mu.Lock() // see progressState
	panicked := st.panicked
	st.mu.Unlock()
	if panicked != nil {
		panic(panicked)
	}
	if e, ok := err.(*Error); ok && e.Code == CodeCanceled && ctx != nil && ctx.Err() != nil {
		e.cause = ctx.Err()
	}
	return err
}

// canceled is the error for a ctx that is done before an operation starts.
func canceled(op string, ctx context.Context) error {
	if ctx == nil || ctx.Err() == nil {
		return nil
	}
	return &Error{Op: op, Code: CodeCanceled, Msg: "imgtool: " + op + ": " + ctx.Err().Error(), cause: ctx.Err()}
}

// Repair says what Check may fix.
type Repair int

const (
	RepairNone  Repair = C.IMGTOOL_REPAIR_NONE  // only check
	RepairLeaks Repair = C.IMGTOOL_REPAIR_LEAKS // -r leaks
	RepairAll   Repair = C.IMGTOOL_REPAIR_ALL   // -r all
)

// CheckOptions are the options of Check; the zero value only checks.
type CheckOptions struct {
	Format     string // -f; "" probes
	Repair     Repair
	ForceShare bool   // -U; only without repair
	Cache      string // -T; "" = "writeback"
	// Log, when set, gets each finding as qemu-img prints it on stderr
	// (e.g. "Leaked cluster 10 refcount=1 reference=0").
	Log func(line string)
	// KeySecret is the id of a secret (see SetSecret) unlocking an
	// encrypted image.
	KeySecret string
}

// CheckReport is the outcome of Check: QAPI ImageCheck as
// `qemu-img check --output=json` prints it, plus ExitCode and Repaired.
type CheckReport struct {
	Filename           string `json:"filename"`
	Format             string `json:"format"`
	CheckErrors        int64  `json:"check-errors"`
	ImageEndOffset     int64  `json:"image-end-offset,omitempty"`
	Corruptions        int64  `json:"corruptions,omitempty"`
	Leaks              int64  `json:"leaks,omitempty"`
	CorruptionsFixed   int64  `json:"corruptions-fixed,omitempty"`
	LeaksFixed         int64  `json:"leaks-fixed,omitempty"`
	TotalClusters      int64  `json:"total-clusters,omitempty"`
	AllocatedClusters  int64  `json:"allocated-clusters,omitempty"`
	FragmentedClusters int64  `json:"fragmented-clusters,omitempty"`
	CompressedClusters int64  `json:"compressed-clusters,omitempty"`

	// qemu-img check's exit status: 0 clean, 1 check errors, 2 corruptions,
	// 3 only leaks.
	ExitCode int `json:"-"`
	// A repair fixed something; the counts are those of the re-check.
	Repaired bool `json:"-"`
	// The library's JSON document, as qemu-img check --output=json.
	JSON string `json:"-"`
}

// Check checks the image at path (and with opts.Repair, repairs it) as
// qemu-img check does. It succeeds whenever the check ran, whatever it
// found: look at the report (ExitCode, Corruptions, Leaks, ...).
//
// Errors: ErrNotSupported for formats without checks (raw), errors from
// opening the image (ErrNotFound, ErrLocked, ...), ErrIO.
func Check(path string, opts CheckOptions) (CheckReport, error) {
	var rep CheckReport
	var cs cstrings
	defer cs.free()
	var o C.imgtool_check_options
	if rc := C.imgtool_check_options_init(&o); rc != C.IMGTOOL_OK {
		return rep, errorf("imgtool_check_options_init", Code(rc), "cannot initialise check options")
	}
	o.format = cs.str(opts.Format)
	o.cache = cs.str(opts.Cache)
	o.key_secret = cs.str(opts.KeySecret)
	o.repair = C.uint32_t(opts.Repair)
	if opts.ForceShare {
		o.flags |= C.IMGTOOL_CHECK_FORCE_SHARE
	}
	cpath := cs.str(path)
	st := &logState{fn: opts.Log}
	var h cgo.Handle
	if opts.Log != nil {
		h = cgo.NewHandle(st)
		defer h.Delete()
	}
	var r C.imgtool_check_report
	r.struct_size = C.uint32_t(C.sizeof_imgtool_check_report)
	var doc *C.char
	err := call("imgtool_check", func() C.int {
		return C.imgtool_go_check(cpath, &o, &r, &doc, C.uintptr_t(h))
	})
	st.mu.Lock()
	panicked := st.panicked
	st.mu.Unlock()
	if doc != nil {
		rep.JSON = C.GoString(doc)
		C.imgtool_free_string(doc)
	}
	if panicked != nil {
		panic(panicked)
	}
	if err != nil {
		return rep, err
	}
	if err := json.Unmarshal([]byte(rep.JSON), &rep); err != nil {
		return rep, errorf("imgtool_check", CodeCorrupt, "imgtool: cannot decode check JSON: %v", err)
	}
	rep.ExitCode = int(r.exit_code)
	rep.Repaired = bool(r.repaired)
	return rep, nil
}

var notice struct {
	sync.Mutex
	h cgo.Handle
}

// SetNoticeHandler sends the library's notices (one-line messages a format
// driver emits on its own, e.g. "qcow2: Image is corrupt: ...") to fn
// instead of stderr; nil restores stderr. fn may be called from any
// thread and must be safe for concurrent use; a panic in it disables it.
func SetNoticeHandler(fn func(line string)) {
	notice.Lock()
	defer notice.Unlock()
	var h cgo.Handle
	if fn != nil {
		h = cgo.NewHandle(&logState{fn: fn})
	}
	C.imgtool_go_set_notice_handler(C.uintptr_t(h))
	// The library no longer calls the old handler once the call returned.
	if notice.h != 0 {
		notice.h.Delete()
	}
	notice.h = h
}
