package imgtool_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	imgtool "github.com/imgtool/imgtool-go"
)

func TestVersion(t *testing.T) {
	if v := imgtool.Version(); v != imgtool.HeaderVersion || v == "" {
		t.Fatalf("library %q, header %q", v, imgtool.HeaderVersion)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := imgtool.Open(filepath.Join(dir, "missing.qcow2"), nil)
	if !errors.Is(err, imgtool.ErrNotFound) || !errors.Is(err, fs.ErrNotExist) ||
		!errors.Is(err, syscall.ENOENT) {
		t.Fatalf("missing file: %v", err)
	}
	var e *imgtool.Error
	if !errors.As(err, &e) || e.Code != imgtool.CodeNotFound || e.Op != "imgtool_open" {
		t.Fatalf("errors.As: %#v", err)
	}
	// qemu-img's wording, without its "qemu-img: " prefix.
	out, _ := exec.Command("qemu-img", "info", filepath.Join(dir, "missing.qcow2")).CombinedOutput()
	if want := strings.TrimPrefix(strings.TrimSpace(string(out)), "qemu-img: "); e.Msg != want {
		t.Fatalf("message %q, qemu-img says %q", e.Msg, want)
	}

	raw := filepath.Join(dir, "a.raw")
	qemuImg(t, "create", "-q", "-f", "raw", raw, "1M")
	if _, err := imgtool.Open(raw, &imgtool.OpenOptions{Format: "nosuch"}); !errors.Is(err, imgtool.ErrInvalid) {
		t.Fatalf("unknown format: %v", err)
	}
	if _, err := imgtool.Open(raw, &imgtool.OpenOptions{Cache: "sometimes"}); !errors.Is(err, imgtool.ErrInvalid) {
		t.Fatalf("bad cache mode: %v", err)
	}

	// A second writer is locked out; a read-only force-share open works.
	w, err := imgtool.Open(raw, &imgtool.OpenOptions{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := imgtool.Open(raw, &imgtool.OpenOptions{Writable: true}); !errors.Is(err, imgtool.ErrLocked) {
		t.Fatalf("second writer: %v", err)
	}
	r, err := imgtool.Open(raw, &imgtool.OpenOptions{ForceShare: true})
	if err != nil {
		t.Fatal(err)
	}
	// Writes through a read-only handle are refused.
	_, err = r.WriteAt([]byte{1}, 0)
	if !errors.Is(err, imgtool.ErrPermission) || !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("write to read-only: %v", err)
	}
	if err := r.WriteZeroes(0, 512, false); !errors.Is(err, imgtool.ErrPermission) {
		t.Fatalf("zeroes to read-only: %v", err)
	}
	r.Close()

	// A qcow2 whose L1 table offset is not cluster-aligned is corrupt.
	q := filepath.Join(dir, "bad.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", q, "1M")
	d, _ := os.ReadFile(q)
	d[40+7] |= 0x01 // l1_table_offset, low byte
	os.WriteFile(q, d, 0o644)
	if _, err := imgtool.Open(q, nil); !errors.Is(err, imgtool.ErrCorrupt) {
		t.Fatalf("corrupt qcow2: %v", err)
	}
}

func TestReadAt(t *testing.T) {
	dir := t.TempDir()
	for _, format := range []string{"raw", "qcow2"} {
		t.Run(format, func(t *testing.T) {
			path, want := knownImage(t, dir, format)
			img, err := imgtool.Open(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			size, err := img.Size()
			if err != nil || size != knownSize {
				t.Fatalf("Size() = %d, %v", size, err)
			}
			// The whole image through io.SectionReader.
			got, err := io.ReadAll(io.NewSectionReader(img, 0, size))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("ReadAll: %v, equal %v", err, bytes.Equal(got, want))
			}
			// qemu-img's own raw conversion agrees.
			ref := filepath.Join(dir, "ref-"+format+".raw")
			qemuImg(t, "convert", "-O", "raw", path, ref)
			refData, _ := os.ReadFile(ref)
			if !bytes.Equal(refData, want) {
				t.Fatal("qemu-img convert output differs from the expected pattern")
			}
			// io.ReaderAt at the end: short read with io.EOF, then 0/io.EOF.
			b := make([]byte, 1000)
			n, err := img.ReadAt(b, size-300)
			if n != 300 || err != io.EOF || !bytes.Equal(b[:300], want[size-300:]) {
				t.Fatalf("read across the end: n=%d err=%v", n, err)
			}
			if n, err := img.ReadAt(b, size); n != 0 || err != io.EOF {
				t.Fatalf("read at the end: n=%d err=%v", n, err)
			}
			if n, err := img.ReadAt(b, size+12345); n != 0 || err != io.EOF {
				t.Fatalf("read past the end: n=%d err=%v", n, err)
			}
			if n, err := img.ReadAt(b[:0], 0); n != 0 || err != nil {
				t.Fatalf("empty read: n=%d err=%v", n, err)
			}
			if _, err := img.ReadAt(b, -1); !errors.Is(err, imgtool.ErrInvalid) {
				t.Fatalf("negative offset: %v", err)
			}
			// Exactly up to the end is a full read without EOF.
			if n, err := img.ReadAt(b[:512], size-512); n != 512 || err != nil {
				t.Fatalf("read to the end: n=%d err=%v", n, err)
			}
		})
	}
}

func TestConcurrentReadAt(t *testing.T) {
	dir := t.TempDir()
	path, want := knownImage(t, dir, "qcow2")
	img, err := imgtool.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			buf := make([]byte, 300000)
			for i := 0; i < 150; i++ {
				n := 1 + rng.Intn(len(buf))
				off := rng.Int63n(knownSize)
				got, err := img.ReadAt(buf[:n], off)
				if err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:got], want[off:off+int64(got)]) {
					errs <- errors.New("data mismatch")
					return
				}
			}
		}(int64(g))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestWriteAt(t *testing.T) {
	dir := t.TempDir()
	for _, format := range []string{"raw", "qcow2"} {
		t.Run(format, func(t *testing.T) {
			path := filepath.Join(dir, "w."+format)
			const size = 8 << 20
			opts := map[string]string{}
			if format == "qcow2" {
				opts["cluster_size"] = "4096"
			}
			if err := imgtool.Create(imgtool.CreateOptions{Filename: path, Format: format, Size: size, Options: opts}); err != nil {
				t.Fatal(err)
			}
			img, err := imgtool.Open(path, &imgtool.OpenOptions{Writable: true})
			if err != nil {
				t.Fatal(err)
			}
			shadow := make([]byte, size)
			// Four goroutines, each in its own unaligned stripe.
			var wg sync.WaitGroup
			var mu sync.Mutex
			var firstErr error
			stripe := int64(size / 4)
			for g := int64(0); g < 4; g++ {
				wg.Add(1)
				go func(g int64) {
					defer wg.Done()
					rng := rand.New(rand.NewSource(g + 100))
					lo := g*stripe + 777*g    // stripes start unaligned...
					hi := (g+1)*stripe - 1000 // ...and never overlap
					for i := 0; i < 60; i++ {
						n := 1 + rng.Int63n(100000)
						off := lo + rng.Int63n(hi-lo-n)
						b := make([]byte, n)
						rng.Read(b)
						if _, err := img.WriteAt(b, off); err != nil {
							mu.Lock()
							firstErr = err
							mu.Unlock()
							return
						}
						copy(shadow[off:], b) // disjoint stripes: no overlap between goroutines
					}
				}(g)
			}
			wg.Wait()
			if firstErr != nil {
				t.Fatal(firstErr)
			}
			// Zeroes and discards.
			if err := img.WriteZeroes(10000, 50000, false); err != nil {
				t.Fatal(err)
			}
			for i := 10000; i < 60000; i++ {
				shadow[i] = 0
			}
			if err := img.WriteZeroes(1<<20, 1<<20, true); err != nil {
				t.Fatal(err)
			}
			for i := 1 << 20; i < 2<<20; i++ {
				shadow[i] = 0
			}
			if err := img.Discard(4<<20, 1<<20); err != nil {
				t.Fatal(err)
			}
			for i := 4 << 20; i < 5<<20; i++ {
				shadow[i] = 0
			}
			// Beyond the end: nothing written, ErrRange.
			if n, err := img.WriteAt([]byte{1, 2}, size-1); n != 0 || !errors.Is(err, imgtool.ErrRange) {
				t.Fatalf("write across the end: n=%d err=%v", n, err)
			}
			if err := img.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			shadowPath := filepath.Join(dir, "shadow-"+format+".raw")
			os.WriteFile(shadowPath, shadow, 0o644)
			if format == "qcow2" {
				qemuImg(t, "check", "-q", path)
			}
			qemuImg(t, "compare", "-q", "-f", format, "-F", "raw", path, shadowPath)
		})
	}
}

func TestClose(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.raw")
	qemuImg(t, "create", "-q", "-f", "raw", path, "1M")
	img, err := imgtool.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Close waits for readers in flight; calls after it fail cleanly.
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, 4096)
			for i := 0; i < 1000; i++ {
				if _, err := img.ReadAt(b, int64(i*512)%(1<<20-4096)); err != nil {
					if !errors.Is(err, imgtool.ErrClosed) {
						t.Error(err)
					}
					return
				}
			}
		}()
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := img.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := img.ReadAt(make([]byte, 1), 0); !errors.Is(err, imgtool.ErrClosed) || !errors.Is(err, fs.ErrClosed) {
		t.Fatalf("ReadAt after Close: %v", err)
	}
	if _, err := img.Size(); !errors.Is(err, imgtool.ErrClosed) {
		t.Fatalf("Size after Close: %v", err)
	}
	if _, err := img.Info(); !errors.Is(err, imgtool.ErrClosed) {
		t.Fatalf("Info after Close: %v", err)
	}
	it := img.BlockStatus(0, 512)
	if it.Next() || !errors.Is(it.Err(), imgtool.ErrClosed) {
		t.Fatalf("BlockStatus after Close: %v", it.Err())
	}
}

// Bench: pattern writes land where qemu-img bench's do; reads complete;
// qemu-img's option errors.
func TestBench(t *testing.T) {
	dir := t.TempDir()
	ours := filepath.Join(dir, "b.qcow2")
	theirs := filepath.Join(dir, "q.qcow2")
	for _, p := range []string{ours, theirs} {
		qemuImg(t, "create", "-q", "-f", "qcow2", p, "4M")
	}
	qemuImg(t, "bench", "-q", "-w", "-c", "100", "-d", "4", "-s", "8192", "-S", "12288", "-o", "512",
		"--pattern=0x3c", "--flush-interval=20", "-f", "qcow2", theirs)
	img, err := imgtool.Open(ours, &imgtool.OpenOptions{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.Bench(imgtool.BenchOptions{Write: true, Count: 100, Depth: 4, BufferSize: 8192,
		Step: 12288, Offset: 512, Pattern: 0x3c, FlushInterval: 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := img.Bench(imgtool.BenchOptions{Count: 1000}); err != nil {
		t.Fatal(err)
	}
	_, err = img.Bench(imgtool.BenchOptions{FlushInterval: 64})
	if !errors.Is(err, imgtool.ErrInvalid) || err.Error() != "--flush-interval is only available in write tests" {
		t.Fatalf("flush interval on reads: %v", err)
	}
	_, err = img.Bench(imgtool.BenchOptions{Write: true, FlushInterval: 2, Depth: 8})
	if !errors.Is(err, imgtool.ErrInvalid) || err.Error() != "Flush interval can't be smaller than depth" {
		t.Fatalf("flush interval below depth: %v", err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuImg(t, "check", "-q", ours)
	qemuImg(t, "compare", "-q", ours, theirs)
	ro, err := imgtool.Open(ours, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.Bench(imgtool.BenchOptions{Write: true, Count: 1}); err == nil {
		t.Fatal("write bench on a read-only image succeeded")
	}
}
