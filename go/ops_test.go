package imgtool_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	imgtool "github.com/imgtool/imgtool-go"
)

func TestInfo(t *testing.T) {
	dir := t.TempDir()
	base, _ := knownImage(t, dir, "raw")
	top := filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "known.raw", "-F", "raw",
		"-o", "cluster_size=16384", top)
	qemuImg(t, "snapshot", "-c", "snap1", top)
	img, err := imgtool.Open(top, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	got, err := img.Info()
	if err != nil {
		t.Fatal(err)
	}
	var want imgtool.ImageInfo
	qemuInfo(t, top, &want)
	if got.Format != "qcow2" || got.VirtualSize != knownSize || got.ClusterSize != 16384 {
		t.Fatalf("info: %+v", got)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"filename", got.Filename, want.Filename},
		{"virtual-size", got.VirtualSize, want.VirtualSize},
		{"cluster-size", got.ClusterSize, want.ClusterSize},
		{"backing-filename", got.BackingFilename, want.BackingFilename},
		{"full-backing-filename", got.FullBackingFilename, want.FullBackingFilename},
		{"backing-filename-format", got.BackingFilenameFormat, want.BackingFilenameFormat},
		{"dirty-flag", got.DirtyFlag, want.DirtyFlag},
		{"encrypted", got.Encrypted, want.Encrypted},
		{"snapshots", len(got.Snapshots), len(want.Snapshots)},
		{"format-specific type", got.FormatSpecific.Type, want.FormatSpecific.Type},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v, qemu-img says %v", c.name, c.got, c.want)
		}
	}
	if len(got.Snapshots) != 1 || got.Snapshots[0].Name != "snap1" || got.Snapshots[0].ID != want.Snapshots[0].ID {
		t.Errorf("snapshots: %+v", got.Snapshots)
	}
	var fs struct {
		Compat       string `json:"compat"`
		RefcountBits int    `json:"refcount-bits"`
	}
	if err := json.Unmarshal(got.FormatSpecific.Data, &fs); err != nil || fs.Compat != "1.1" || fs.RefcountBits != 16 {
		t.Errorf("format-specific data: %s (%v)", got.FormatSpecific.Data, err)
	}
	if got.ChainLength != 2 || !got.FormatProbed {
		t.Errorf("chain length %d, probed %v", got.ChainLength, got.FormatProbed)
	}
	snaps, err := img.Snapshots()
	if err != nil || !reflect.DeepEqual(snaps, got.Snapshots) {
		t.Errorf("Snapshots() = %+v, %v; Info has %+v", snaps, err, got.Snapshots)
	}
	if len(got.Children) != 1 || got.Children[0].Name != "file" {
		t.Errorf("children: %+v", got.Children)
	}
	doc, err := img.InfoJSON()
	if err != nil || !strings.Contains(doc, `"backing-filename": "known.raw"`) {
		t.Errorf("InfoJSON: %v\n%s", err, doc)
	}
	_ = base
}

func TestBlockStatus(t *testing.T) {
	dir := t.TempDir()
	for _, format := range []string{"raw", "qcow2"} {
		path, want := knownImage(t, dir, format)
		img, err := imgtool.Open(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		// The extents tile the image; what is not data reads as zeros.
		var pos int64
		var ours []span
		it := img.BlockStatus(0, knownSize)
		for it.Next() {
			e := it.Extent()
			if e.Start != pos || e.Length <= 0 {
				t.Fatalf("%s: extent %+v at %d", format, e, pos)
			}
			if !e.Data {
				for _, b := range want[e.Start : e.Start+e.Length] {
					if b != 0 {
						t.Fatalf("%s: %+v is not data but holds data", format, e)
					}
				}
			}
			ours = append(ours, span{e.Start, e.Length, e.Data})
			pos += e.Length
		}
		if it.Err() != nil || pos != knownSize {
			t.Fatalf("%s: iteration ended at %d: %v", format, pos, it.Err())
		}
		// Data ranges as qemu-img map sees them.
		var qmap []struct {
			Start  int64 `json:"start"`
			Length int64 `json:"length"`
			Data   bool  `json:"data"`
		}
		if err := json.Unmarshal(qemuImg(t, "map", "--output=json", "-f", format, path), &qmap); err != nil {
			t.Fatal(err)
		}
		var theirs []span
		for _, m := range qmap {
			theirs = append(theirs, span{m.Start, m.Length, m.Data})
		}
		if a, b := dataRanges(ours), dataRanges(theirs); !equalSpans(a, b) {
			t.Errorf("%s: data ranges differ from qemu-img map:\n ours %v\n qemu %v", format, a, b)
		}
		// A sub-range is clipped to it; a range past the end is empty.
		it = img.BlockStatus(knownSize-1000, 5000)
		var n int64
		for it.Next() {
			n += it.Extent().Length
		}
		if it.Err() != nil || n != 1000 {
			t.Fatalf("%s: tail range: %d bytes, %v", format, n, it.Err())
		}
		if it := img.BlockStatus(knownSize, 10); it.Next() || it.Err() != nil {
			t.Fatalf("%s: range at the end: %v", format, it.Err())
		}
		if it := img.BlockStatus(-1, 10); it.Next() || !errors.Is(it.Err(), imgtool.ErrInvalid) {
			t.Fatalf("%s: negative offset: %v", format, it.Err())
		}
		img.Close()
	}
}

type span struct {
	start, length int64
	data          bool
}

func dataRanges(s []span) [][2]int64 {
	var out [][2]int64
	for _, x := range s {
		if !x.data {
			continue
		}
		if n := len(out); n > 0 && out[n-1][1] == x.start {
			out[n-1][1] += x.length
		} else {
			out = append(out, [2]int64{x.start, x.start + x.length})
		}
	}
	return out
}

func equalSpans(a, b [][2]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCreate(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "a.raw")
	if err := imgtool.Create(imgtool.CreateOptions{Filename: raw, Size: 3 << 20}); err != nil {
		t.Fatal(err)
	}
	var info imgtool.ImageInfo
	qemuInfo(t, raw, &info)
	if info.Format != "raw" || info.VirtualSize != 3<<20 {
		t.Fatalf("raw: %+v", info)
	}
	q := filepath.Join(dir, "b.qcow2")
	err := imgtool.Create(imgtool.CreateOptions{
		Filename: q, Format: "qcow2", Size: 5 << 20,
		Options: map[string]string{"cluster_size": "4096", "lazy_refcounts": "on"},
	})
	if err != nil {
		t.Fatal(err)
	}
	qemuInfo(t, q, &info)
	var fs struct {
		LazyRefcounts bool `json:"lazy-refcounts"`
	}
	json.Unmarshal(info.FormatSpecific.Data, &fs)
	if info.ClusterSize != 4096 || info.VirtualSize != 5<<20 || !fs.LazyRefcounts {
		t.Fatalf("qcow2: %+v %s", info, info.FormatSpecific.Data)
	}
	qemuImg(t, "check", "-q", q)
	// An overlay takes the backing file's size.
	ov := filepath.Join(dir, "ov.qcow2")
	if err := imgtool.Create(imgtool.CreateOptions{Filename: ov, Format: "qcow2", BackingFile: "a.raw", BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	qemuInfo(t, ov, &info)
	if info.VirtualSize != 3<<20 || info.BackingFilename != "a.raw" || info.BackingFilenameFormat != "raw" {
		t.Fatalf("overlay: %+v", info)
	}
	// Errors.
	if err := imgtool.Create(imgtool.CreateOptions{Filename: q, Format: "qcow2", Size: 1 << 20, Options: map[string]string{"no_such_option": "1"}}); !errors.Is(err, imgtool.ErrInvalid) ||
		err.Error() != "Invalid parameter 'no_such_option'" {
		t.Fatalf("unknown option: %v", err)
	}
	if err := imgtool.Create(imgtool.CreateOptions{Filename: q, Format: "nosuch", Size: 1 << 20}); !errors.Is(err, imgtool.ErrInvalid) {
		t.Fatalf("unknown format: %v", err)
	}
	if err := imgtool.Create(imgtool.CreateOptions{Filename: filepath.Join(dir, "no/such/dir.raw"), Size: 1 << 20}); !errors.Is(err, imgtool.ErrNotFound) {
		t.Fatalf("missing directory: %v", err)
	}
}

func TestConvert(t *testing.T) {
	dir := t.TempDir()
	src, _ := knownImage(t, dir, "qcow2")
	dst := filepath.Join(dir, "out.qcow2")
	var calls int
	last := -1.0
	err := imgtool.Convert(context.Background(), []string{src}, dst,
		imgtool.ConvertOptions{OutFormat: "qcow2", Compress: true, Workers: 4},
		func(p float64) {
			if p < last || p > 100 {
				t.Errorf("progress went from %v to %v", last, p)
			}
			last = p
			calls++
		})
	if err != nil {
		t.Fatal(err)
	}
	if calls == 0 || last != 100 {
		t.Fatalf("%d progress calls, last %v", calls, last)
	}
	qemuImg(t, "check", "-q", dst)
	qemuImg(t, "compare", "-q", src, dst)

	// Two sources, concatenated, into raw, without a progress function.
	raw, _ := knownImage(t, dir, "raw")
	cat := filepath.Join(dir, "cat.raw")
	if err := imgtool.Convert(context.Background(), []string{raw, src}, cat, imgtool.ConvertOptions{SparseSize: -1}, nil); err != nil {
		t.Fatal(err)
	}
	oracle := filepath.Join(dir, "cat-oracle.raw")
	qemuImg(t, "convert", "-O", "raw", raw, src, oracle)
	qemuImg(t, "compare", "-q", "-f", "raw", "-F", "raw", cat, oracle)

	if err := imgtool.Convert(context.Background(), nil, cat, imgtool.ConvertOptions{}, nil); !errors.Is(err, imgtool.ErrInvalid) {
		t.Fatalf("no sources: %v", err)
	}
	if err := imgtool.Convert(context.Background(), []string{src}, cat, imgtool.ConvertOptions{Workers: 17}, nil); !errors.Is(err, imgtool.ErrInvalid) {
		t.Fatalf("17 workers: %v", err)
	}
	if err := imgtool.Convert(context.Background(), []string{filepath.Join(dir, "missing")}, cat, imgtool.ConvertOptions{}, nil); !errors.Is(err, imgtool.ErrNotFound) {
		t.Fatalf("missing source: %v", err)
	}
}

func TestConvertCancel(t *testing.T) {
	dir := t.TempDir()
	src, _ := knownImage(t, dir, "qcow2")
	dst := filepath.Join(dir, "cancel.qcow2")

	// Cancelled from the progress callback midway: the partial target goes.
	ctx, cancel := context.WithCancel(context.Background())
	var sawPartial bool
	err := imgtool.Convert(ctx, []string{src}, dst, imgtool.ConvertOptions{OutFormat: "qcow2", Workers: 1},
		func(p float64) {
			if p > 0 {
				if _, err := os.Stat(dst); err == nil {
					sawPartial = true
				}
				cancel()
			}
		})
	if !errors.Is(err, imgtool.ErrCanceled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled convert: %v", err)
	}
	if !sawPartial {
		t.Error("the target did not exist while converting")
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial output left behind: %v", err)
	}

	// Cancelled from another goroutine, no progress function.
	ctx, cancel = context.WithCancel(context.Background())
	go func() { time.Sleep(time.Millisecond); cancel() }()
	err = imgtool.Convert(ctx, []string{src}, dst, imgtool.ConvertOptions{OutFormat: "qcow2", Workers: 1}, nil)
	if err != nil && (!errors.Is(err, imgtool.ErrCanceled) || !errors.Is(err, context.Canceled)) {
		t.Fatalf("cancelled from a goroutine: %v", err)
	}
	if _, statErr := os.Stat(dst); (err != nil) == (statErr == nil) {
		t.Fatalf("after %v, target exists: %v", err, statErr == nil)
	}
	os.Remove(dst)

	// An expired deadline: nothing starts.
	ctx, cancel = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	err = imgtool.Convert(ctx, []string{src}, dst, imgtool.ConvertOptions{}, nil)
	if !errors.Is(err, imgtool.ErrCanceled) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expired deadline: %v", err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("target created despite an expired deadline")
	}

	// A panic in the progress function cancels, removes the target and is
	// re-raised in the caller.
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("recovered %v", r)
			}
		}()
		imgtool.Convert(context.Background(), []string{src}, dst, imgtool.ConvertOptions{OutFormat: "qcow2"},
			func(p float64) { panic("boom") })
		t.Fatal("no panic")
	}()
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("target left behind after a panic")
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	src, _ := knownImage(t, dir, "qcow2")
	path := filepath.Join(dir, "chk.qcow2")
	qemuImg(t, "convert", "-O", "qcow2", src, path)

	rep, err := imgtool.Check(path, imgtool.CheckOptions{})
	if err != nil || rep.ExitCode != 0 || rep.Leaks != 0 || rep.Corruptions != 0 || rep.Format != "qcow2" {
		t.Fatalf("clean: %+v %v", rep, err)
	}
	if rep.TotalClusters != knownSize/65536 || rep.AllocatedClusters == 0 {
		t.Fatalf("clean counts: %+v", rep)
	}

	leaked := leakCluster(t, path)
	qjson, qcode := qemuImgCode(t, "check", "--output=json", path)
	var lines []string
	rep, err = imgtool.Check(path, imgtool.CheckOptions{Log: func(l string) { lines = append(lines, l) }})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ExitCode != qcode || rep.ExitCode != 3 || rep.Leaks != 1 {
		t.Fatalf("leak: exit %d (qemu-img %d): %+v", rep.ExitCode, qcode, rep)
	}
	if strings.TrimSpace(rep.JSON) != strings.TrimSpace(string(qjson)) {
		t.Errorf("JSON differs from qemu-img check --output=json:\n%s\n%s", rep.JSON, qjson)
	}
	want := "Leaked cluster " + itoa(leaked) + " refcount=1 reference=0"
	if len(lines) != 1 || lines[0] != want {
		t.Errorf("log %q, want %q", lines, want)
	}

	rep, err = imgtool.Check(path, imgtool.CheckOptions{Repair: imgtool.RepairLeaks})
	if err != nil || !rep.Repaired || rep.LeaksFixed != 1 || rep.Leaks != 0 || rep.ExitCode != 0 {
		t.Fatalf("repair: %+v %v", rep, err)
	}
	qemuImg(t, "check", "-q", path)
	qemuImg(t, "compare", "-q", src, path)

	// A repair needs the write lock.
	img, err := imgtool.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := imgtool.Check(path, imgtool.CheckOptions{Repair: imgtool.RepairAll}); !errors.Is(err, imgtool.ErrLocked) {
		t.Fatalf("repair of an open image: %v", err)
	}
	img.Close()

	raw := filepath.Join(dir, "r.raw")
	qemuImg(t, "create", "-q", "-f", "raw", raw, "1M")
	if _, err := imgtool.Check(raw, imgtool.CheckOptions{}); !errors.Is(err, imgtool.ErrNotSupported) ||
		err.Error() != "This image format does not support checks" {
		t.Fatalf("raw: %v", err)
	}
	if _, err := imgtool.Check(filepath.Join(dir, "missing"), imgtool.CheckOptions{}); !errors.Is(err, imgtool.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if _, err := imgtool.Check(path, imgtool.CheckOptions{Repair: 9}); !errors.Is(err, imgtool.ErrInvalid) {
		t.Fatalf("bad repair mode: %v", err)
	}
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func TestNoticeHandlerAndCorruptReads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "n.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", path, "1M")
	qemuIO(t, "qcow2", path, "write -P 1 0 64k")
	// Misalign the first L2 entry: reading cluster 0 hits corrupt metadata.
	d, _ := os.ReadFile(path)
	l1 := binary.BigEndian.Uint64(d[40:])
	l2 := binary.BigEndian.Uint64(d[l1:]) & 0x00ff_ffff_ffff_fe00
	e := binary.BigEndian.Uint64(d[l2:]) | 0x200
	binary.BigEndian.PutUint64(d[l2:], e)
	os.WriteFile(path, d, 0o644)

	var mu sync.Mutex
	var notices []string
	imgtool.SetNoticeHandler(func(l string) { mu.Lock(); notices = append(notices, l); mu.Unlock() })
	defer imgtool.SetNoticeHandler(nil)
	img, err := imgtool.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	_, err = img.ReadAt(make([]byte, 512), 0)
	if !errors.Is(err, imgtool.ErrCorrupt) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of corrupt metadata: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(notices) != 1 || !strings.HasPrefix(notices[0], "qcow2: Image is corrupt") {
		t.Fatalf("notices: %q", notices)
	}
}

func TestErrorsIs(t *testing.T) {
	sentinels := map[imgtool.Code]error{
		imgtool.CodeInvalid: imgtool.ErrInvalid, imgtool.CodeNotFound: imgtool.ErrNotFound,
		imgtool.CodePermission: imgtool.ErrPermission, imgtool.CodeIO: imgtool.ErrIO,
		imgtool.CodeCorrupt: imgtool.ErrCorrupt, imgtool.CodeNotSupported: imgtool.ErrNotSupported,
		imgtool.CodeLocked: imgtool.ErrLocked, imgtool.CodeCanceled: imgtool.ErrCanceled,
		imgtool.CodeNoSpace: imgtool.ErrNoSpace, imgtool.CodeRange: imgtool.ErrRange,
		imgtool.CodeNoMemory: imgtool.ErrNoMemory, imgtool.CodePanic: imgtool.ErrPanic,
	}
	for code, s := range sentinels {
		err := error(&imgtool.Error{Code: code, Msg: "x"})
		for c2, s2 := range sentinels {
			if errors.Is(err, s2) != (c2 == code) {
				t.Errorf("code %d vs sentinel of %d", code, c2)
			}
		}
		if code.String() == "Unknown error code" || s.Error() == "" {
			t.Errorf("code %d has no description", code)
		}
	}
	wrapped := fmt.Errorf("context: %w", &imgtool.Error{Code: imgtool.CodeNoSpace, Errno: syscall.ENOSPC})
	if !errors.Is(wrapped, imgtool.ErrNoSpace) || !errors.Is(wrapped, syscall.ENOSPC) {
		t.Error("wrapped error")
	}
}

// Convert with Bitmaps: the target lists the bitmaps qemu-img convert
// --bitmaps copies; a raw target is refused with qemu-img's message.
func TestConvertBitmaps(t *testing.T) {
	dir := t.TempDir()
	src, _ := knownImage(t, dir, "qcow2")
	qemuImg(t, "bitmap", "--add", src, "b1")
	qemuImg(t, "bitmap", "--add", "--disable", "-g", "131072", src, "b2")
	qemuIO(t, "qcow2", src, "write -P 0x44 2M 300k")
	q := filepath.Join(dir, "q.qcow2")
	ours := filepath.Join(dir, "o.qcow2")
	qemuImg(t, "convert", "--bitmaps", "-O", "qcow2", src, q)
	if err := imgtool.Convert(nil, []string{src}, ours, imgtool.ConvertOptions{OutFormat: "qcow2", Bitmaps: true}, nil); err != nil {
		t.Fatal(err)
	}
	type bm struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []map[string]any `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	var qi, oi bm
	qemuInfo(t, q, &qi)
	qemuInfo(t, ours, &oi)
	if len(qi.FormatSpecific.Data.Bitmaps) != 2 || !reflect.DeepEqual(qi, oi) {
		t.Fatalf("bitmaps: qemu-img %+v, ours %+v", qi, oi)
	}
	qemuImg(t, "compare", "-q", q, ours)
	err := imgtool.Convert(nil, []string{src}, filepath.Join(dir, "x.raw"), imgtool.ConvertOptions{Bitmaps: true}, nil)
	if !errors.Is(err, imgtool.ErrNotSupported) || err.Error() != "Format driver 'raw' does not support bitmaps" {
		t.Fatalf("raw target: %v", err)
	}
}
