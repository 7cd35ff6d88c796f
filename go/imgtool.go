// Package imgtool reads, writes, creates, converts and checks disk images
// (raw, qcow2) through libimgtool, a qemu-img compatible library.
//
// It links against the installed C library via pkg-config ("imgtool"):
//
//	make install PREFIX=/usr/local    # in the imgtool source tree
//	go get github.com/imgtool/imgtool-go
//
// An *Image is safe for concurrent use: ReadAt, WriteAt, WriteZeroes,
// Discard, Flush, Size, Info and BlockStatus may be called from several
// goroutines at once (they run in parallel inside the library). Close waits
// for calls in flight, and every call after Close fails with ErrClosed.
// Images are not closed by the garbage collector: call Close.
//
// Errors returned by this package are *Error values carrying the library's
// code and message (qemu-img's wording); test them with errors.Is against
// the sentinels (ErrNotFound, ErrInvalid, ErrCorrupt, ...) or errors.As.
package imgtool

/*
#cgo pkg-config: imgtool
#include <imgtool.h>
#include <stdlib.h>
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Version is the version of the libimgtool the program runs against.
func Version() string {
	return C.GoString(C.imgtool_version())
}

// HeaderVersion is the version of the imgtool.h the package was built with.
const HeaderVersion = C.IMGTOOL_VERSION_STRING

// call runs one fallible C function and reads its thread-local error on
// the same OS thread (a goroutine may otherwise move between threads
// between the two cgo calls).
func call(op string, f func() C.int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if rc := f(); rc != C.IMGTOOL_OK {
		return lastError(op, rc)
	}
	return nil
}

// cstrings holds C copies of Go strings until free.
type cstrings []*C.char

// str returns a C copy of s, or NULL for "".
func (cs *cstrings) str(s string) *C.char {
	if s == "" {
		return nil
	}
	p := C.CString(s)
	*cs = append(*cs, p)
	return p
}

func (cs *cstrings) free() {
	for _, p := range *cs {
		C.free(unsafe.Pointer(p))
	}
	*cs = nil
}
