package imgtool_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	imgtool "github.com/imgtool/imgtool-go"
)

// rawContent is the guest content of an image, as qemu-img converts it.
func rawContent(t *testing.T, path string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "content.raw")
	qemuImg(t, "convert", "-O", "raw", path, out)
	d, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// overlayOnKnown makes top.qcow2 over the known raw image with some data
// of its own.
func overlayOnKnown(t *testing.T, dir string) (base, top string) {
	base, _ = knownImage(t, dir, "raw")
	top = filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "known.raw", "-F", "raw", top)
	qemuIO(t, "qcow2", top, "write -P 0x99 100000 300000", "write -z 2M 64k")
	return base, top
}

func TestCommit(t *testing.T) {
	dir := t.TempDir()
	base, top := overlayOnKnown(t, dir)
	want := rawContent(t, top)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := imgtool.Commit(ctx, top, imgtool.CommitOptions{}, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled commit: %v", err)
	}
	var last float64
	if err := imgtool.Commit(context.Background(), top, imgtool.CommitOptions{}, func(p float64) { last = p }); err != nil {
		t.Fatal(err)
	}
	if last != 100 {
		t.Errorf("last progress %v", last)
	}
	if !bytes.Equal(rawContent(t, base), want) || !bytes.Equal(rawContent(t, top), want) {
		t.Fatal("content changed")
	}
	qemuImg(t, "check", "-q", top)
	// Nothing left allocated in the top.
	img, err := imgtool.Open(top, nil)
	if err != nil {
		t.Fatal(err)
	}
	it := img.BlockStatus(0, knownSize)
	for it.Next() {
		if e := it.Extent(); e.Depth == 0 && e.Present {
			t.Errorf("still allocated in the top: %+v", e)
		}
	}
	img.Close()
	if err := imgtool.Commit(nil, base, imgtool.CommitOptions{Format: "raw"}, nil); !errors.Is(err, imgtool.ErrInvalid) ||
		err.Error() != "Image does not have a backing file" {
		t.Fatalf("commit without backing file: %v", err)
	}
}

func TestRebase(t *testing.T) {
	dir := t.TempDir()
	_, top := overlayOnKnown(t, dir)
	other := filepath.Join(dir, "other.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", other, "16M")
	qemuIO(t, "qcow2", other, "write -P 0x42 0 5M")
	want := rawContent(t, top)

	if err := imgtool.Rebase(nil, top, imgtool.RebaseOptions{BackingFile: "other.qcow2", BackingFormat: "qcow2"}, nil); err != nil {
		t.Fatal(err)
	}
	var info imgtool.ImageInfo
	qemuInfo(t, top, &info)
	if info.BackingFilename != "other.qcow2" || !bytes.Equal(rawContent(t, top), want) {
		t.Fatalf("after rebase: backing %q, content equal %v", info.BackingFilename, bytes.Equal(rawContent(t, top), want))
	}
	qemuImg(t, "check", "-q", top)
	// No backing file: the image takes all of its content.
	if err := imgtool.Rebase(context.Background(), top, imgtool.RebaseOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	qemuInfo(t, top, &info)
	if info.BackingFilename != "" || !bytes.Equal(rawContent(t, top), want) {
		t.Fatalf("after removing the backing file: %+v", info)
	}
	// Unsafe: only the header.
	if err := imgtool.Rebase(nil, top, imgtool.RebaseOptions{BackingFile: "known.raw", BackingFormat: "raw", Unsafe: true}, nil); err != nil {
		t.Fatal(err)
	}
	qemuInfo(t, top, &info)
	if info.BackingFilename != "known.raw" {
		t.Fatalf("unsafe rebase: %+v", info)
	}
}

func TestResize(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "r.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", path, "1M")
	qemuIO(t, "qcow2", path, "write -P 7 1040384 8192")
	if err := imgtool.Resize(path, 3<<20, imgtool.ResizeOptions{}); err != nil {
		t.Fatal(err)
	}
	var info imgtool.ImageInfo
	qemuInfo(t, path, &info)
	if info.VirtualSize != 3<<20 {
		t.Fatalf("size %d", info.VirtualSize)
	}
	qemuImg(t, "check", "-q", path)
	err := imgtool.Resize(path, 1<<20, imgtool.ResizeOptions{})
	if !errors.Is(err, imgtool.ErrInvalid) || err.Error() != "Use the --shrink option to perform a shrink operation." {
		t.Fatalf("shrink without Shrink: %v", err)
	}
	if err := imgtool.Resize(path, 1<<20, imgtool.ResizeOptions{Shrink: true}); err != nil {
		t.Fatal(err)
	}
	qemuInfo(t, path, &info)
	if info.VirtualSize != 1<<20 {
		t.Fatalf("size %d", info.VirtualSize)
	}
	qemuImg(t, "check", "-q", path)
}

func TestAmend(t *testing.T) {
	dir := t.TempDir()
	path, _ := knownImage(t, dir, "qcow2")
	want := rawContent(t, path)
	var calls int
	if err := imgtool.Amend(path, imgtool.AmendOptions{Options: map[string]string{"compat": "0.10"}}, func(float64) { calls++ }); err != nil {
		t.Fatal(err)
	}
	var info imgtool.ImageInfo
	qemuInfo(t, path, &info)
	if !bytes.Contains(info.FormatSpecific.Data, []byte(`"compat": "0.10"`)) && !bytes.Contains(info.FormatSpecific.Data, []byte(`"compat":"0.10"`)) {
		t.Fatalf("format-specific: %s", info.FormatSpecific.Data)
	}
	qemuImg(t, "check", "-q", path)
	if !bytes.Equal(rawContent(t, path), want) {
		t.Fatal("content changed")
	}
	if err := imgtool.Amend(path, imgtool.AmendOptions{}, nil); !errors.Is(err, imgtool.ErrInvalid) {
		t.Fatalf("no options: %v", err)
	}
}

func TestSnapshots(t *testing.T) {
	dir := t.TempDir()
	path, want := knownImage(t, dir, "qcow2")
	s, err := imgtool.SnapshotCreate(path, "base", nil)
	if err != nil || s.Name != "base" || s.ID != "1" {
		t.Fatalf("create: %+v %v", s, err)
	}
	qemuIO(t, "qcow2", path, "write -P 0xee 0 1M")
	out := qemuImg(t, "snapshot", "-l", path)
	if !bytes.Contains(out, []byte("base")) {
		t.Fatalf("qemu-img snapshot -l:\n%s", out)
	}
	if err := imgtool.SnapshotApply(path, "base", &imgtool.SnapshotOptions{Format: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rawContent(t, path), want) {
		t.Fatal("apply did not restore the content")
	}
	if err := imgtool.SnapshotDelete(path, "base", nil); err != nil {
		t.Fatal(err)
	}
	if err := imgtool.SnapshotDelete(path, "base", nil); !errors.Is(err, imgtool.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	qemuImg(t, "check", "-q", path)
	raw, _ := knownImage(t, dir, "raw")
	if _, err := imgtool.SnapshotCreate(raw, "x", nil); !errors.Is(err, imgtool.ErrNotSupported) {
		t.Fatalf("raw: %v", err)
	}
}

// Dd: the same operands as qemu-img dd give the same output (judged by
// qemu-img), and qemu-img's errors.
func TestDd(t *testing.T) {
	dir := t.TempDir()
	src, _ := knownImage(t, dir, "qcow2")
	for _, c := range []struct {
		name string
		args []string
		opts imgtool.DdOptions
	}{
		{"whole", nil, imgtool.DdOptions{}},
		{"window", []string{"bs=65536", "skip=2", "count=40"}, imgtool.DdOptions{BlockSize: 65536, Skip: 2, Count: 40}},
		{"qcow2", []string{"-O", "qcow2", "bs=4096", "count=1000"}, imgtool.DdOptions{OutFormat: "qcow2", BlockSize: 4096, Count: 1000}},
		{"count0", []string{"count=0"}, imgtool.DdOptions{CountZero: true}},
	} {
		q := filepath.Join(dir, c.name+".q")
		ours := filepath.Join(dir, c.name+".i")
		qemuImg(t, append([]string{"dd", "if=" + src, "of=" + q}, c.args...)...)
		if err := imgtool.Dd(src, ours, c.opts); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		f := c.opts.OutFormat
		if f == "" {
			f = "raw"
		}
		var qi, ii imgtool.ImageInfo
		qemuInfo(t, q, &qi)
		qemuInfo(t, ours, &ii)
		if qi.VirtualSize != ii.VirtualSize || qi.Format != ii.Format {
			t.Fatalf("%s: qemu-img dd made %+v, Dd %+v", c.name, qi, ii)
		}
		qemuImg(t, "compare", "-q", "-f", f, "-F", f, ours, q)
	}
	err := imgtool.Dd(src, filepath.Join(dir, "x"), imgtool.DdOptions{OutFormat: "nosuch"})
	if !errors.Is(err, imgtool.ErrInvalid) || err.Error() != "Unknown file format" {
		t.Fatalf("unknown format: %v", err)
	}
	err = imgtool.Dd(filepath.Join(dir, "missing"), filepath.Join(dir, "x"), imgtool.DdOptions{})
	if !errors.Is(err, imgtool.ErrNotFound) {
		t.Fatalf("missing input: %v", err)
	}
}
