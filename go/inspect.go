package imgtool

/*
#include "trampolines.h"
*/
import "C"

// MapEntry is one entry of `qemu-img map --output=json` (QAPI MapEntry).
type MapEntry struct {
	Start      int64  `json:"start"`
	Length     int64  `json:"length"`
	Depth      int    `json:"depth"`
	Present    bool   `json:"present"`
	Zero       bool   `json:"zero"`
	Data       bool   `json:"data"`
	Compressed bool   `json:"compressed"`
	Offset     *int64 `json:"offset,omitempty"`   // host offset in Filename
	Filename   string `json:"filename,omitempty"` // the file Offset refers to
}

// MapEntries iterates the entries of Map, one imgtool_map call per step:
//
//	it := img.Map(0, size)
//	for it.Next() {
//		e := it.Entry()
//		...
//	}
//	if err := it.Err(); err != nil { ... }
type MapEntries struct {
	img      *Image
	pos, end int64
	cur      MapEntry
	err      error
}

// Map returns an iterator over the entries qemu-img map prints for
// [offset, offset+length), clipped at the end of the image: runs merged
// as qemu-img merges them, with host offsets and file names.
func (img *Image) Map(offset, length int64) *MapEntries {
	it := &MapEntries{img: img, pos: offset, end: offset + length}
	if offset < 0 || length < 0 || it.end < offset {
		it.err = errorf("imgtool_map", CodeInvalid, "imgtool: bad range [%d, +%d)", offset, length)
	}
	return it
}

// Next advances to the next entry; false at the end or on error.
func (it *MapEntries) Next() bool {
	if it.err != nil || it.pos >= it.end {
		return false
	}
	p, err := it.img.handle()
	if err != nil {
		it.err = err
		return false
	}
	defer it.img.mu.RUnlock()
	var size C.uint64_t
	var e C.imgtool_map_entry
	e.struct_size = C.uint32_t(C.sizeof_imgtool_map_entry)
	err = call("imgtool_map", func() C.int {
		if rc := C.imgtool_get_size(p, &size); rc != C.IMGTOOL_OK {
			return rc
		}
		if uint64(it.pos) >= uint64(size) {
			return C.IMGTOOL_OK
		}
		return C.imgtool_map(p, C.uint64_t(it.pos), C.uint64_t(it.end-it.pos), &e)
	})
	if err != nil {
		it.err = err
		return false
	}
	if uint64(it.pos) >= uint64(size) || e.length == 0 {
		it.end = it.pos
		return false
	}
	it.cur = MapEntry{
		Start:      int64(e.start),
		Length:     int64(e.length),
		Depth:      int(e.depth),
		Data:       e.flags&C.IMGTOOL_EXTENT_DATA != 0,
		Zero:       e.flags&C.IMGTOOL_EXTENT_ZERO != 0,
		Present:    e.flags&C.IMGTOOL_EXTENT_PRESENT != 0,
		Compressed: e.flags&C.IMGTOOL_EXTENT_COMPRESSED != 0,
	}
	if e.has_offset {
		off := int64(e.offset)
		it.cur.Offset = &off
		if e.filename != nil {
			it.cur.Filename = C.GoString(e.filename)
		}
	}
	it.pos += int64(e.length)
	return true
}

// Entry is the current entry (valid after Next returned true).
func (it *MapEntries) Entry() MapEntry { return it.cur }

// Err is the error that stopped the iteration, if any.
func (it *MapEntries) Err() error { return it.err }

// CompareOptions are the options of Compare.
type CompareOptions struct {
	// Strict (-s): sizes and allocation status must match too.
	Strict bool
}

// CompareResult says how two images compare.
type CompareResult int

// The results of Compare.
const (
	Identical       CompareResult = C.IMGTOOL_COMPARE_IDENTICAL
	ContentMismatch CompareResult = C.IMGTOOL_COMPARE_CONTENT_MISMATCH
	SizeMismatch    CompareResult = C.IMGTOOL_COMPARE_SIZE_MISMATCH   // strict mode
	StatusMismatch  CompareResult = C.IMGTOOL_COMPARE_STATUS_MISMATCH // strict mode
)

// CompareReport is the outcome of Compare.
type CompareReport struct {
	Result CompareResult
	// Offset of the first difference for the mismatch results (the first
	// differing 512-byte sector for content, as qemu-img reports it).
	Offset int64
	// Not strict: the sizes differ (the longer tail was compared with zeros).
	SizeMismatch bool
	// qemu-img compare's exit status: 0 identical, 1 different.
	ExitCode int
}

// Compare compares the guest content of two open images as qemu-img
// compare does. It succeeds whenever the comparison ran to its end, equal
// or not; progress (may be nil) gets the percentage done. It cannot be
// cancelled. a and b may be the same image.
func Compare(a, b *Image, opts CompareOptions, progress func(float64)) (CompareReport, error) {
	var rep CompareReport
	pa, err := a.handle()
	if err != nil {
		return rep, err
	}
	defer a.mu.RUnlock()
	pb := pa
	if b != a {
		// Never read-lock one image twice: a Close waiting in between
		// would deadlock.
		if pb, err = b.handle(); err != nil {
			return rep, err
		}
		defer b.mu.RUnlock()
	}
	var o C.imgtool_compare_options
	if rc := C.imgtool_compare_options_init(&o); rc != C.IMGTOOL_OK {
		return rep, errorf("imgtool_compare_options_init", Code(rc), "cannot initialise compare options")
	}
	if opts.Strict {
		o.flags |= C.IMGTOOL_COMPARE_STRICT
	}
	var r C.imgtool_compare_report
	r.struct_size = C.uint32_t(C.sizeof_imgtool_compare_report)
	err = withProgress(nil, "imgtool_compare", progress, func(h C.uintptr_t) C.int {
		return C.imgtool_go_compare(pa, pb, &o, &r, h)
	})
	if err != nil {
		return rep, err
	}
	return CompareReport{
		Result:       CompareResult(r.result),
		Offset:       int64(r.offset),
		SizeMismatch: bool(r.size_mismatch),
		ExitCode:     int(r.exit_code),
	}, nil
}

// MeasureOptions describe the image Measure sizes.
type MeasureOptions struct {
	OutFormat string            // -O; "" = "raw"
	Options   map[string]string // -o creation options
	// Size of a new empty image (--size); 0 when measuring a source.
	Size int64
}

// MeasureReport is QAPI BlockMeasureInfo, as qemu-img measure --output=json.
type MeasureReport struct {
	Required       int64  `json:"required"`
	FullyAllocated int64  `json:"fully-allocated"`
	Bitmaps        *int64 `json:"bitmaps,omitempty"`
}

// Measure computes the host size an image of opts.OutFormat would need, as
// qemu-img measure does: for a new empty image of opts.Size bytes (source
// nil) or for a copy of source (open it with OpenOptions.Snapshot to
// measure a snapshot).
func Measure(opts MeasureOptions, source *Image) (MeasureReport, error) {
	var rep MeasureReport
	var cs cstrings
	defer cs.free()
	var o C.imgtool_measure_options
	if rc := C.imgtool_measure_options_init(&o); rc != C.IMGTOOL_OK {
		return rep, errorf("imgtool_measure_options_init", Code(rc), "cannot initialise measure options")
	}
	o.out_format = cs.str(opts.OutFormat)
	o.options = cs.str(optionString(opts.Options))
	if opts.Size < 0 {
		return rep, errorf("imgtool_measure", CodeInvalid, "imgtool: negative size %d", opts.Size)
	}
	if opts.Size > 0 {
		o.size = C.uint64_t(opts.Size)
	}
	var p *C.imgtool_image
	if source != nil {
		var err error
		if p, err = source.handle(); err != nil {
			return rep, err
		}
		defer source.mu.RUnlock()
	}
	var r C.imgtool_measure_report
	r.struct_size = C.uint32_t(C.sizeof_imgtool_measure_report)
	if err := call("imgtool_measure", func() C.int { return C.imgtool_measure(&o, p, &r, nil) }); err != nil {
		return rep, err
	}
	rep.Required = int64(r.required)
	rep.FullyAllocated = int64(r.fully_allocated)
	if r.has_bitmaps {
		b := int64(r.bitmaps)
		rep.Bitmaps = &b
	}
	return rep, nil
}
