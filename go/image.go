package imgtool

/*
#include <imgtool.h>
#include <stdlib.h>
*/
import "C"

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// OpenOptions say how Open opens an image; the zero value (or nil) opens
// read-only, probes the format, follows the backing chain, takes image
// locks and uses the writeback cache.
type OpenOptions struct {
	Writable   bool   // open for writing
	Format     string // "raw", "qcow2", ...; "" probes the file
	Cache      string // qemu-img -t: "writeback" (""), "writethrough", "none", "directsync", "unsafe"
	ForceShare bool   // take no locks (qemu-img -U); for read-only inspection of an image in use
	NoBacking  bool   // do not open the backing chain; unallocated areas read as zeros
	// Snapshot opens this internal snapshot (ID or name, or
	// "snapshot.id=ID" / "snapshot.name=NAME") read-only instead of the
	// current state, as qemu-img's -l.
	Snapshot string
	// KeySecret is the id of a secret (see SetSecret) unlocking an
	// encrypted image, as qemu-img's encrypt.key-secret=ID. Without it an
	// encrypted image opens for its metadata only.
	KeySecret string
}

// Image is an open disk image with its backing chain. It is safe for
// concurrent use by several goroutines; see the package documentation.
type Image struct {
	mu   sync.RWMutex // read-held by every call, write-held by Close
	p    *C.imgtool_image
	name string
}

// debugLeaks makes a finalizer report Images that were never closed (it
// does not close them). Set IMGTOOL_GO_DEBUG_LEAKS=1 to enable.
var debugLeaks = os.Getenv("IMGTOOL_GO_DEBUG_LEAKS") == "1"

// Open opens the image at path. opts may be nil for the defaults.
//
// Errors: ErrNotFound, ErrPermission, ErrLocked (in use by another process
// or another writable handle), ErrCorrupt, ErrInvalid (unknown format or
// cache mode), ErrNotSupported, ErrIO.
func Open(path string, opts *OpenOptions) (*Image, error) {
	if opts == nil {
		opts = &OpenOptions{}
	}
	var cs cstrings
	defer cs.free()
	var o C.imgtool_open_options
	if rc := C.imgtool_open_options_init(&o); rc != C.IMGTOOL_OK {
		return nil, errorf("imgtool_open_options_init", Code(rc), "cannot initialise open options")
	}
	if opts.Writable {
		o.flags |= C.IMGTOOL_OPEN_WRITABLE
	}
	if opts.ForceShare {
		o.flags |= C.IMGTOOL_OPEN_FORCE_SHARE
	}
	if opts.NoBacking {
		o.flags |= C.IMGTOOL_OPEN_NO_BACKING
	}
	o.format = cs.str(opts.Format)
	o.cache = cs.str(opts.Cache)
	o.snapshot = cs.str(opts.Snapshot)
	o.key_secret = cs.str(opts.KeySecret)
	cpath := cs.str(path)
	if cpath == nil {
		return nil, errorf("imgtool_open", CodeInvalid, "imgtool: empty path")
	}
	var p *C.imgtool_image
	if err := call("imgtool_open", func() C.int { return C.imgtool_open(cpath, &o, &p) }); err != nil {
		return nil, err
	}
	img := &Image{p: p, name: path}
	if debugLeaks {
		runtime.SetFinalizer(img, func(img *Image) {
			if img.p != nil {
				fmt.Fprintf(os.Stderr, "imgtool: Image %q was garbage-collected without Close\n", img.name)
			}
		})
	}
	return img, nil
}

// Name is the path the image was opened with.
func (img *Image) Name() string { return img.name }

// Close flushes and closes the image. It waits for calls in flight on
// other goroutines; later calls fail with ErrClosed. Closing again is a
// no-op returning nil. The handle is released even when the final flush
// fails (the error is returned).
func (img *Image) Close() error {
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.p == nil {
		return nil
	}
	p := img.p
	img.p = nil
	return call("imgtool_close", func() C.int { return C.imgtool_close(p) })
}

// handle read-locks the image; the caller must call img.mu.RUnlock.
func (img *Image) handle() (*C.imgtool_image, error) {
	img.mu.RLock()
	if img.p == nil {
		img.mu.RUnlock()
		return nil, ErrClosed
	}
	return img.p, nil
}

// Size is the virtual (guest-visible) size in bytes.
func (img *Image) Size() (int64, error) {
	p, err := img.handle()
	if err != nil {
		return 0, err
	}
	defer img.mu.RUnlock()
	var size C.uint64_t
	if err := call("imgtool_get_size", func() C.int { return C.imgtool_get_size(p, &size) }); err != nil {
		return 0, err
	}
	return int64(size), nil
}

// ReadAt reads len(b) bytes of guest data at offset off, resolving the
// backing chain (unallocated areas read as zeros). As io.ReaderAt: a read
// that reaches the end of the image returns the bytes before it and
// io.EOF; n < len(b) only with a non-nil error.
func (img *Image) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errorf("imgtool_read", CodeInvalid, "imgtool: negative offset %d", off)
	}
	p, err := img.handle()
	if err != nil {
		return 0, err
	}
	defer img.mu.RUnlock()
	read := func(n int) error {
		if n == 0 {
			return nil
		}
		return call("imgtool_read", func() C.int {
			return C.imgtool_read(p, unsafe.Pointer(&b[0]), C.size_t(n), C.uint64_t(off))
		})
	}
	err = read(len(b))
	if err == nil || !isCode(err, CodeRange) {
		if err != nil {
			return 0, err
		}
		if len(b) == 0 {
			// A zero-length read at or past the end is still EOF.
			var size C.uint64_t
			if err := call("imgtool_get_size", func() C.int { return C.imgtool_get_size(p, &size) }); err != nil {
				return 0, err
			}
			if uint64(off) >= uint64(size) {
				return 0, io.EOF
			}
		}
		return len(b), nil
	}
	// The range crosses the end: read what is there and report io.EOF.
	var size C.uint64_t
	if err := call("imgtool_get_size", func() C.int { return C.imgtool_get_size(p, &size) }); err != nil {
		return 0, err
	}
	if uint64(off) >= uint64(size) {
		return 0, io.EOF
	}
	n := int(uint64(size) - uint64(off))
	if err := read(n); err != nil {
		return 0, err
	}
	return n, io.EOF
}

func isCode(err error, c Code) bool {
	e, ok := err.(*Error)
	return ok && e.Code == c
}

// WriteAt writes b at guest offset off (any alignment). The image must be
// open for writing (ErrPermission otherwise). As io.WriterAt, n < len(b)
// only with an error; a write beyond the virtual size writes nothing and
// fails with ErrRange. Data is durable after Flush or Close.
func (img *Image) WriteAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errorf("imgtool_write", CodeInvalid, "imgtool: negative offset %d", off)
	}
	p, err := img.handle()
	if err != nil {
		return 0, err
	}
	defer img.mu.RUnlock()
	if len(b) == 0 {
		return 0, nil
	}
	err = call("imgtool_write", func() C.int {
		return C.imgtool_write(p, unsafe.Pointer(&b[0]), C.size_t(len(b)), C.uint64_t(off))
	})
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// WriteZeroes makes length bytes at off read as zeros without a buffer;
// with mayUnmap the format may deallocate the range instead of writing.
func (img *Image) WriteZeroes(off, length int64, mayUnmap bool) error {
	if off < 0 || length < 0 {
		return errorf("imgtool_write_zeroes", CodeInvalid, "imgtool: negative offset or length")
	}
	p, err := img.handle()
	if err != nil {
		return err
	}
	defer img.mu.RUnlock()
	var flags C.uint32_t
	if mayUnmap {
		flags = C.IMGTOOL_ZERO_MAY_UNMAP
	}
	return call("imgtool_write_zeroes", func() C.int {
		return C.imgtool_write_zeroes(p, C.uint64_t(off), C.uint64_t(length), flags)
	})
}

// Discard tells the image length bytes at off are unused (TRIM); the
// format may free whole clusters. Afterwards the range reads as its old
// data, zeros or backing data, depending on the format.
func (img *Image) Discard(off, length int64) error {
	if off < 0 || length < 0 {
		return errorf("imgtool_discard", CodeInvalid, "imgtool: negative offset or length")
	}
	p, err := img.handle()
	if err != nil {
		return err
	}
	defer img.mu.RUnlock()
	return call("imgtool_discard", func() C.int {
		return C.imgtool_discard(p, C.uint64_t(off), C.uint64_t(length))
	})
}

// Flush writes cached data and metadata back and flushes the host file.
func (img *Image) Flush() error {
	p, err := img.handle()
	if err != nil {
		return err
	}
	defer img.mu.RUnlock()
	return call("imgtool_flush", func() C.int { return C.imgtool_flush(p) })
}

var (
	_ io.ReaderAt = (*Image)(nil)
	_ io.WriterAt = (*Image)(nil)
	_ io.Closer   = (*Image)(nil)
)

// BenchOptions are the options of Bench (qemu-img bench's flags); zero
// values take qemu-img's defaults.
type BenchOptions struct {
	Write         bool  // -w: write instead of read (the image must be writable)
	Count         int   // -c: requests; 0 = 75000
	Depth         int   // -d: requests in flight; 0 = 64
	Offset        int64 // -o: offset of the first request
	BufferSize    int   // -s: bytes per request; 0 = 4096
	Step          int64 // -S: offset increment; 0 = BufferSize
	FlushInterval int   // --flush-interval: flush every N requests (writes only); 0 = never
	NoDrain       bool  // --no-drain: flush without waiting for requests in flight
	Pattern       byte  // --pattern: the byte written
}

// Bench issues opts.Count requests on the image, opts.Depth at a time, as
// qemu-img bench does, and returns how long they took.
func (img *Image) Bench(opts BenchOptions) (time.Duration, error) {
	p, err := img.handle()
	if err != nil {
		return 0, err
	}
	defer img.mu.RUnlock()
	var o C.imgtool_bench_options
	if rc := C.imgtool_bench_options_init(&o); rc != C.IMGTOOL_OK {
		return 0, errorf("imgtool_bench_options_init", Code(rc), "cannot initialise bench options")
	}
	const intMax = 1<<31 - 1
	for _, v := range []int64{int64(opts.Count), int64(opts.Depth), int64(opts.BufferSize), opts.Step, int64(opts.FlushInterval)} {
		if v < 0 || v > intMax {
			return 0, errorf("imgtool_bench", CodeInvalid, "imgtool: bench option out of range")
		}
	}
	if opts.Offset < 0 {
		return 0, errorf("imgtool_bench", CodeInvalid, "imgtool: negative bench offset")
	}
	if opts.Count > 0 {
		o.count = C.uint32_t(opts.Count)
	}
	if opts.Depth > 0 {
		o.depth = C.uint32_t(opts.Depth)
	}
	if opts.BufferSize > 0 {
		o.buffer_size = C.uint64_t(opts.BufferSize)
	}
	o.offset = C.uint64_t(opts.Offset)
	o.step = C.uint64_t(opts.Step)
	o.flush_interval = C.uint32_t(opts.FlushInterval)
	o.pattern = C.uint8_t(opts.Pattern)
	if opts.Write {
		o.flags |= C.IMGTOOL_BENCH_WRITE
	}
	if opts.NoDrain {
		o.flags |= C.IMGTOOL_BENCH_NO_DRAIN
	}
	var r C.imgtool_bench_report
	r.struct_size = C.uint32_t(unsafe.Sizeof(r))
	if err := call("imgtool_bench", func() C.int { return C.imgtool_bench(p, &o, &r) }); err != nil {
		return 0, err
	}
	return time.Duration(r.elapsed_ns), nil
}
