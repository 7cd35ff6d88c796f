package imgtool

/*
#include <imgtool.h>
*/
import "C"

import (
	"encoding/json"
)

// ImageInfo is what `qemu-img info --output=json` reports for one layer
// (QAPI ImageInfo), decoded from the library's JSON, plus ChainLength and
// FormatProbed from imgtool_get_info.
type ImageInfo struct {
	Filename              string          `json:"filename"`
	Format                string          `json:"format"`
	DirtyFlag             bool            `json:"dirty-flag"`
	ActualSize            *int64          `json:"actual-size,omitempty"`
	VirtualSize           int64           `json:"virtual-size"`
	ClusterSize           int64           `json:"cluster-size,omitempty"`
	Encrypted             bool            `json:"encrypted,omitempty"`
	BackingFilename       string          `json:"backing-filename,omitempty"`
	FullBackingFilename   string          `json:"full-backing-filename,omitempty"`
	BackingFilenameFormat string          `json:"backing-filename-format,omitempty"`
	Snapshots             []SnapshotInfo  `json:"snapshots,omitempty"`
	FormatSpecific        *FormatSpecific `json:"format-specific,omitempty"`
	Children              []ImageChild    `json:"children,omitempty"`

	// Layers in the open backing chain (1 without a backing file).
	ChainLength int `json:"-"`
	// The format was probed rather than given in OpenOptions.Format.
	FormatProbed bool `json:"-"`
}

// SnapshotInfo is one internal snapshot (QAPI SnapshotInfo).
type SnapshotInfo struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	VMStateSize int64  `json:"vm-state-size"`
	DateSec     int64  `json:"date-sec"`
	DateNsec    int64  `json:"date-nsec"`
	VMClockSec  int64  `json:"vm-clock-sec"`
	VMClockNsec int64  `json:"vm-clock-nsec"`
	ICount      *int64 `json:"icount,omitempty"`
}

// FormatSpecific is QAPI ImageInfoSpecific: the format name and its data
// (for qcow2: "compat", "lazy-refcounts", "refcount-bits", ...), kept raw.
type FormatSpecific struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// ImageChild is a child node, e.g. the "file" protocol layer.
type ImageChild struct {
	Name string    `json:"name"`
	Info ImageInfo `json:"info"`
}

// InfoJSON returns the `qemu-img info --output=json` document of the image
// (its top layer) exactly as the library prints it.
func (img *Image) InfoJSON() (string, error) {
	p, err := img.handle()
	if err != nil {
		return "", err
	}
	defer img.mu.RUnlock()
	var s *C.char
	if err := call("imgtool_info_json", func() C.int { return C.imgtool_info_json(p, &s) }); err != nil {
		return "", err
	}
	defer C.imgtool_free_string(s)
	return C.GoString(s), nil
}

// Info describes the image (its top layer, as qemu-img info does).
func (img *Image) Info() (ImageInfo, error) {
	var info ImageInfo
	doc, err := img.InfoJSON()
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal([]byte(doc), &info); err != nil {
		return info, errorf("imgtool_info_json", CodeCorrupt, "imgtool: cannot decode info JSON: %v", err)
	}
	p, err := img.handle()
	if err != nil {
		return info, err
	}
	defer img.mu.RUnlock()
	var ci C.imgtool_info
	ci.struct_size = C.uint32_t(C.sizeof_imgtool_info)
	if err := call("imgtool_get_info", func() C.int { return C.imgtool_get_info(p, &ci) }); err != nil {
		return info, err
	}
	C.imgtool_info_free(&ci)
	info.ChainLength = int(ci.chain_length)
	info.FormatProbed = bool(ci.format_probed)
	return info, nil
}

// Extent is a run of guest bytes with one allocation status, as block
// status reports it (the fields of a `qemu-img map --output=json` entry).
type Extent struct {
	Start      int64 // guest offset
	Length     int64
	Depth      int   // layer that decided it: 0 = this image, 1 = its backing file, ...
	Offset     int64 // host offset in that layer's file; valid when HasOffset
	HasOffset  bool
	Data       bool // reads come from a file
	Zero       bool // reads as zeros
	Present    bool // allocated in some layer
	Compressed bool
}

// Extents iterates block status over a range of an image:
//
//	it := img.BlockStatus(0, size)
//	for it.Next() {
//		e := it.Extent()
//		...
//	}
//	if err := it.Err(); err != nil { ... }
//
// Each step is one imgtool_block_status call; nothing is buffered.
type Extents struct {
	img      *Image
	pos, end int64
	cur      Extent
	err      error
}

// BlockStatus returns an iterator over the extents covering
// [offset, offset+length), clipped at the end of the image.
func (img *Image) BlockStatus(offset, length int64) *Extents {
	it := &Extents{img: img, pos: offset, end: offset + length}
	if offset < 0 || length < 0 || it.end < offset {
		it.err = errorf("imgtool_block_status", CodeInvalid, "imgtool: bad range [%d, +%d)", offset, length)
	}
	return it
}

// Next advances to the next extent; false at the end or on error.
func (it *Extents) Next() bool {
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
	var e C.imgtool_extent
	err = call("imgtool_block_status", func() C.int {
		if rc := C.imgtool_get_size(p, &size); rc != C.IMGTOOL_OK {
			return rc
		}
		if uint64(it.pos) >= uint64(size) {
			return C.IMGTOOL_OK
		}
		return C.imgtool_block_status(p, C.uint64_t(it.pos), C.uint64_t(it.end-it.pos), &e)
	})
	if err != nil {
		it.err = err
		return false
	}
	if uint64(it.pos) >= uint64(size) || e.length == 0 {
		it.end = it.pos
		return false
	}
	it.cur = Extent{
		Start:      it.pos,
		Length:     int64(e.length),
		Depth:      int(e.depth),
		Offset:     int64(e.offset),
		HasOffset:  bool(e.has_offset),
		Data:       e.flags&C.IMGTOOL_EXTENT_DATA != 0,
		Zero:       e.flags&C.IMGTOOL_EXTENT_ZERO != 0,
		Present:    e.flags&C.IMGTOOL_EXTENT_PRESENT != 0,
		Compressed: e.flags&C.IMGTOOL_EXTENT_COMPRESSED != 0,
	}
	it.pos += int64(e.length)
	return true
}

// Extent is the current extent (valid after Next returned true).
func (it *Extents) Extent() Extent { return it.cur }

// Err is the error that stopped the iteration, if any.
func (it *Extents) Err() error { return it.err }

// Snapshots lists the image's internal snapshots (qcow2) in table order,
// as qemu-img snapshot -l does.
func (img *Image) Snapshots() ([]SnapshotInfo, error) {
	p, err := img.handle()
	if err != nil {
		return nil, err
	}
	defer img.mu.RUnlock()
	var list []SnapshotInfo
	for i := 0; ; i++ {
		var s C.imgtool_snapshot
		s.struct_size = C.uint32_t(C.sizeof_imgtool_snapshot)
		err := call("imgtool_snapshot_get", func() C.int { return C.imgtool_snapshot_get(p, C.size_t(i), &s) })
		if isCode(err, CodeRange) {
			return list, nil
		}
		if err != nil {
			return nil, err
		}
		list = append(list, snapshotFromC(&s))
	}
}

func snapshotFromC(s *C.imgtool_snapshot) SnapshotInfo {
	si := SnapshotInfo{
		ID:          C.GoString(&s.id[0]),
		Name:        C.GoString(&s.name[0]),
		VMStateSize: int64(s.vm_state_size),
		DateSec:     int64(s.date_sec),
		DateNsec:    int64(s.date_nsec),
		VMClockSec:  int64(s.vm_clock_nsec / 1e9),
		VMClockNsec: int64(s.vm_clock_nsec % 1e9),
	}
	if s.has_icount {
		ic := int64(s.icount)
		si.ICount = &ic
	}
	return si
}
