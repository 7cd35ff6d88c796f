package imgtool

// The C callbacks. A file with //export may only declare things in its
// preamble; the C trampolines that call them are in trampolines.c.

/*
#include <stdint.h>
*/
import "C"

import (
	"context"
	"runtime/cgo"
	"sync"
)

// progressState is what a progress callback's cgo.Handle refers to.
//
// The library calls the callback on its own threads (never two at once)
// and joins them before the operation returns. The Go race detector cannot
// see that join, so every callback runs under mu and the caller takes mu
// once the operation returned: that makes what the callback wrote (and
// what the user's function wrote) visibly happen before the caller reads
// it.
type progressState struct {
	mu       sync.Mutex
	ctx      context.Context
	fn       func(float64)
	panicked any // a panic of fn, re-raised on the calling goroutine
	failed   bool
}

//export imgtoolGoProgress
func imgtoolGoProgress(percent C.double, user C.uintptr_t) (ret C.int) {
	st := cgo.Handle(user).Value().(*progressState)
	st.mu.Lock()
	defer st.mu.Unlock()
	defer func() {
		// A Go panic must not unwind through the C library: cancel the
		// operation and re-panic once it has returned.
		if r := recover(); r != nil {
			st.panicked = r
			st.failed = true
			ret = 1
		}
	}()
	if st.failed {
		return 1
	}
	if st.fn != nil {
		st.fn(float64(percent))
	}
	if st.ctx != nil && st.ctx.Err() != nil {
		return 1
	}
	return 0
}

// logState is what a log callback's cgo.Handle refers to (mu as in
// progressState; notice handlers may also be called concurrently).
type logState struct {
	mu       sync.Mutex
	fn       func(string)
	panicked any
}

//export imgtoolGoLog
func imgtoolGoLog(line *C.char, user C.uintptr_t) {
	st := cgo.Handle(user).Value().(*logState)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.panicked != nil {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			st.panicked = r
		}
	}()
	st.fn(C.GoString(line))
}
