package imgtool_test

import (
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	imgtool "github.com/imgtool/imgtool-go"
)

func TestMap(t *testing.T) {
	dir := t.TempDir()
	_, top := overlayOnKnown(t, dir)
	qemuIO(t, "qcow2", top, "write -c -P 0x31 6M 64k")
	img, err := imgtool.Open(top, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var ours []imgtool.MapEntry
	it := img.Map(0, knownSize)
	for it.Next() {
		e := it.Entry()
		if e.Offset != nil && !strings.HasSuffix(e.Filename, ".qcow2") && !strings.HasSuffix(e.Filename, ".raw") {
			t.Errorf("entry %+v has no file name", e)
		}
		e.Filename = "" // qemu-img map --output=json does not print it
		ours = append(ours, e)
	}
	if it.Err() != nil {
		t.Fatal(it.Err())
	}
	var theirs []imgtool.MapEntry
	if err := json.Unmarshal(qemuImg(t, "map", "--output=json", top), &theirs); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ours, theirs) {
		t.Fatalf("map differs from qemu-img map:\n ours %+v\n qemu %+v", ours, theirs)
	}
	if it := img.Map(knownSize, 1); it.Next() || it.Err() != nil {
		t.Fatalf("map at the end: %v", it.Err())
	}
}

func TestCompare(t *testing.T) {
	dir := t.TempDir()
	base, top := overlayOnKnown(t, dir)
	flat := filepath.Join(dir, "flat.raw")
	qemuImg(t, "convert", "-O", "raw", top, flat)
	open := func(p string) *imgtool.Image {
		img, err := imgtool.Open(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { img.Close() })
		return img
	}
	it, ib, iflat := open(top), open(base), open(flat)
	for _, c := range []struct {
		a, b   *imgtool.Image
		pa, pb string
		strict bool
	}{
		{it, iflat, top, flat, false},
		{it, ib, top, base, false},
		{it, iflat, top, flat, true},
		{it, it, top, top, true},
	} {
		var last float64
		r, err := imgtool.Compare(c.a, c.b, imgtool.CompareOptions{Strict: c.strict}, func(p float64) { last = p })
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"compare"}
		if c.strict {
			args = append(args, "-s")
		}
		out, _ := exec.Command("qemu-img", append(args, c.pa, c.pb)...).Output()
		code := 0
		if !strings.Contains(string(out), "identical") {
			code = 1
		}
		if r.ExitCode != code || last != 100 {
			t.Errorf("%s vs %s (strict %v): %+v, qemu-img says %q", c.pa, c.pb, c.strict, r, out)
		}
		if r.Result == imgtool.ContentMismatch && !strings.Contains(string(out), "offset "+itoa(r.Offset)+"!") {
			t.Errorf("offset %d, qemu-img says %q", r.Offset, out)
		}
	}
}

func TestMeasure(t *testing.T) {
	dir := t.TempDir()
	path, _ := knownImage(t, dir, "qcow2")
	check := func(r imgtool.MeasureReport, err error, args ...string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		var want imgtool.MeasureReport
		if err := json.Unmarshal(qemuImg(t, append([]string{"measure", "--output=json"}, args...)...), &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(r, want) {
			t.Errorf("measure %v: %+v, qemu-img %+v", args, r, want)
		}
	}
	r, err := imgtool.Measure(imgtool.MeasureOptions{OutFormat: "qcow2", Size: 1 << 30}, nil)
	check(r, err, "-O", "qcow2", "--size", "1G")
	img, err := imgtool.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err = imgtool.Measure(imgtool.MeasureOptions{OutFormat: "qcow2", Options: map[string]string{"cluster_size": "4096"}}, img)
	check(r, err, "-O", "qcow2", "-o", "cluster_size=4096", path)
	if _, err := imgtool.Measure(imgtool.MeasureOptions{Size: 1 << 20}, img); !errors.Is(err, imgtool.ErrInvalid) {
		t.Fatalf("size and source: %v", err)
	}
	img.Close()
	if _, err := imgtool.Measure(imgtool.MeasureOptions{}, nil); !errors.Is(err, imgtool.ErrInvalid) {
		t.Fatalf("neither size nor source: %v", err)
	}

	// A snapshot of the source, opened with OpenOptions.Snapshot.
	qemuImg(t, "snapshot", "-c", "s1", path)
	qemuIO(t, "qcow2", path, "write -P 0x12 8M 4M")
	snap, err := imgtool.Open(path, &imgtool.OpenOptions{Snapshot: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	r, err = imgtool.Measure(imgtool.MeasureOptions{OutFormat: "qcow2"}, snap)
	check(r, err, "-O", "qcow2", "-l", "s1", path)
	if _, err := imgtool.Open(path, &imgtool.OpenOptions{Snapshot: "s1", Writable: true}); err == nil {
		t.Fatal("a writable snapshot view opened")
	}
}
