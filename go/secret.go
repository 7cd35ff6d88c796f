package imgtool

/*
#include <imgtool.h>
#include <stdlib.h>
*/
import "C"

import "unsafe"

// SetSecret defines (or replaces) the process-wide secret id, as
// qemu-img's --object secret,id=ID,data=...: a passphrase that ends at its
// first NUL byte. Options name it by id (OpenOptions.KeySecret,
// "encrypt.key-secret" in creation options). The library keeps its own
// copy, wiped when replaced or removed.
//
// Errors: ErrInvalid (empty id).
func SetSecret(id string, data []byte) error {
	if id == "" {
		return errorf("imgtool_secret_set", CodeInvalid, "imgtool: empty secret id")
	}
	cid := C.CString(id)
	defer C.free(unsafe.Pointer(cid))
	var p unsafe.Pointer
	if len(data) > 0 {
		// C.CBytes copies: the library never sees Go memory it could keep.
		p = C.CBytes(data)
		defer func() {
			b := unsafe.Slice((*byte)(p), len(data))
			for i := range b {
				b[i] = 0
			}
			C.free(p)
		}()
	}
	return call("imgtool_secret_set", func() C.int {
		return C.imgtool_secret_set(cid, p, C.size_t(len(data)))
	})
}

// RemoveSecret forgets secret id. Images opened with it stay usable.
//
// Errors: ErrNotFound (no such secret).
func RemoveSecret(id string) error {
	cid := C.CString(id)
	defer C.free(unsafe.Pointer(cid))
	return call("imgtool_secret_remove", func() C.int { return C.imgtool_secret_remove(cid) })
}
