package imgtool_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// qemuImg runs qemu-img and returns its stdout; failure fails the test.
func qemuImg(t *testing.T, args ...string) []byte {
	t.Helper()
	out, code := qemuImgCode(t, args...)
	if code != 0 {
		t.Fatalf("qemu-img %v: exit %d", args, code)
	}
	return out
}

// qemuImgCode runs qemu-img and returns stdout and the exit status.
func qemuImgCode(t *testing.T, args ...string) ([]byte, int) {
	t.Helper()
	cmd := exec.Command("qemu-img", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		t.Logf("qemu-img %v: exit %d: %s", args, ee.ExitCode(), stderr.Bytes())
		return stdout.Bytes(), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("qemu-img %v: %v", args, err)
	}
	return stdout.Bytes(), 0
}

// qemuIO runs qemu-io commands on an image.
func qemuIO(t *testing.T, format, path string, cmds ...string) {
	t.Helper()
	args := []string{"-f", format}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, path)
	out, err := exec.Command("qemu-io", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io %v: %v\n%s", args, err, out)
	}
}

// knownWrites is the pattern every test image gets (qemu-io commands and
// the bytes they leave in a 16 MiB image).
var knownWrites = []struct {
	pattern     byte
	off, length int64
}{
	{0xaa, 0, 65536},
	{0x55, 1 << 20, 4096},
	{0x11, 65535, 3},
	{0xc3, 3145727, 131074},
	{0x00, 4096, 4096},
	{0x3c, 5242980, 200000},
	{0x7e, 16<<20 - 512, 512},
}

const knownSize = 16 << 20

// knownImage makes a 16 MiB image of the format with qemu-img + qemu-io
// and returns its path and expected contents.
func knownImage(t *testing.T, dir, format string) (string, []byte) {
	t.Helper()
	path := filepath.Join(dir, "known."+format)
	qemuImg(t, "create", "-q", "-f", format, path, "16M")
	var cmds []string
	want := make([]byte, knownSize)
	for _, w := range knownWrites {
		if w.pattern == 0 {
			cmds = append(cmds, fmt.Sprintf("write -z %d %d", w.off, w.length))
		} else {
			cmds = append(cmds, fmt.Sprintf("write -P 0x%02x %d %d", w.pattern, w.off, w.length))
		}
		for i := w.off; i < w.off+w.length; i++ {
			want[i] = w.pattern
		}
	}
	qemuIO(t, format, path, cmds...)
	return path, want
}

// qemuInfo decodes qemu-img info --output=json into *v (which it zeroes
// first: fields missing from the JSON must not keep old values).
func qemuInfo[T any](t *testing.T, path string, v *T) {
	t.Helper()
	var zero T
	*v = zero
	if err := json.Unmarshal(qemuImg(t, "info", "--output=json", path), v); err != nil {
		t.Fatal(err)
	}
}

// leakCluster appends a cluster to a small 64 KiB-cluster qcow2 (16-bit
// refcounts) and gives it a refcount nothing references; returns its index.
func leakCluster(t *testing.T, path string) int64 {
	t.Helper()
	d, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	reftable := binary.BigEndian.Uint64(d[48:])
	refblock := binary.BigEndian.Uint64(d[reftable:])
	n := (int64(len(d)) + 65535) / 65536
	buf := make([]byte, (n+1)*65536)
	copy(buf, d)
	binary.BigEndian.PutUint16(buf[int64(refblock)+2*n:], 1)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	return n
}
