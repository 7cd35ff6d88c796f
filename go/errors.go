package imgtool

/*
#include <imgtool.h>
*/
import "C"

import (
	"fmt"
	"io/fs"
	"syscall"
)

// Code is a libimgtool result code (IMGTOOL_E* in imgtool.h).
type Code int

// The library's error codes.
const (
	CodeInvalid      Code = C.IMGTOOL_EINVAL
	CodeNotFound     Code = C.IMGTOOL_ENOENT
	CodePermission   Code = C.IMGTOOL_EACCES
	CodeIO           Code = C.IMGTOOL_EIO
	CodeCorrupt      Code = C.IMGTOOL_ECORRUPT
	CodeNotSupported Code = C.IMGTOOL_ENOTSUP
	CodeLocked       Code = C.IMGTOOL_ELOCKED
	CodeCanceled     Code = C.IMGTOOL_ECANCELED
	CodeNoSpace      Code = C.IMGTOOL_ENOSPC
	CodeRange        Code = C.IMGTOOL_ERANGE
	CodeNoMemory     Code = C.IMGTOOL_ENOMEM
	CodePanic        Code = C.IMGTOOL_EPANIC
)

// String is the library's static description of the code.
func (c Code) String() string {
	return C.GoString(C.imgtool_strerror(C.int(c)))
}

// Sentinel errors: errors.Is(err, ErrNotFound) is true for any *Error with
// the matching code.
var (
	ErrInvalid      = &sentinel{CodeInvalid, "imgtool: invalid argument"}
	ErrNotFound     = &sentinel{CodeNotFound, "imgtool: no such file or directory"}
	ErrPermission   = &sentinel{CodePermission, "imgtool: permission denied"}
	ErrIO           = &sentinel{CodeIO, "imgtool: input/output error"}
	ErrCorrupt      = &sentinel{CodeCorrupt, "imgtool: image is corrupt"}
	ErrNotSupported = &sentinel{CodeNotSupported, "imgtool: operation not supported"}
	ErrLocked       = &sentinel{CodeLocked, "imgtool: image is locked"}
	ErrCanceled     = &sentinel{CodeCanceled, "imgtool: operation canceled"}
	ErrNoSpace      = &sentinel{CodeNoSpace, "imgtool: no space left on device"}
	ErrRange        = &sentinel{CodeRange, "imgtool: request beyond the end of the image"}
	ErrNoMemory     = &sentinel{CodeNoMemory, "imgtool: out of memory"}
	ErrPanic        = &sentinel{CodePanic, "imgtool: internal error (panic) in libimgtool"}
)

// ErrClosed is returned by calls on an Image after Close. It matches
// fs.ErrClosed too.
var ErrClosed error = &closedError{}

type closedError struct{}

func (*closedError) Error() string        { return "imgtool: image is closed" }
func (*closedError) Is(target error) bool { return target == fs.ErrClosed }

type sentinel struct {
	code Code
	msg  string
}

func (s *sentinel) Error() string { return s.msg }

// Error is a failure reported by libimgtool.
type Error struct {
	Op    string        // the C function, e.g. "imgtool_open"
	Code  Code          // IMGTOOL_E* code
	Errno syscall.Errno // host errno behind it, or 0
	Msg   string        // the library's message (qemu-img's wording)
	cause error         // e.g. context.Canceled for a cancelled Convert
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("%s: %s", e.Op, e.Code)
	}
	return e.Msg
}

// Is matches the sentinel of e's code, and the standard errors that mean
// the same: fs.ErrNotExist, fs.ErrPermission, and (for ErrCanceled raised
// by a context) the context's error through Unwrap.
func (e *Error) Is(target error) bool {
	if s, ok := target.(*sentinel); ok {
		return s.code == e.Code
	}
	switch target {
	case fs.ErrNotExist:
		return e.Code == CodeNotFound
	case fs.ErrPermission:
		return e.Code == CodePermission
	}
	return false
}

// Unwrap returns the cause (a context error for a cancelled operation) or
// else the errno, so errors.Is(err, syscall.ENOSPC) works.
func (e *Error) Unwrap() error {
	if e.cause != nil {
		return e.cause
	}
	if e.Errno != 0 {
		return e.Errno
	}
	return nil
}

// lastError builds an *Error from the calling thread's last error; the
// caller has the OS thread locked since the failing call.
func lastError(op string, rc C.int) error {
	return &Error{
		Op:    op,
		Code:  Code(rc),
		Errno: syscall.Errno(C.imgtool_last_errno()),
		Msg:   C.GoString(C.imgtool_last_error()),
	}
}

// errorf is for failures detected on the Go side.
func errorf(op string, code Code, format string, args ...any) error {
	return &Error{Op: op, Code: code, Msg: fmt.Sprintf(format, args...)}
}
