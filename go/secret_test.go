package imgtool_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	imgtool "github.com/imgtool/imgtool-go"
)

// An encrypted qcow2 made by qemu-img: read with imgtool.SetSecret + KeySecret it
// equals qemu-img's decryption; converted into a new LUKS qcow2 it passes
// qemu-img check and compare (given the same secret).
func TestSecretsDecryptLikeQemu(t *testing.T) {
	dir := t.TempDir()
	sec := "--object=secret,id=gosec,data=pw-go"
	opts := func(f string) string { return "driver=qcow2,file.filename=" + f + ",encrypt.key-secret=gosec" }
	img := filepath.Join(dir, "enc.qcow2")
	qemuImg(t, "create", sec, "-q", "-f", "qcow2", "-o",
		"encrypt.format=luks,encrypt.key-secret=gosec,encrypt.iter-time=10", img, "2M")
	if out, err := exec.Command("qemu-io", sec, "--image-opts", "-c", "write -P 0x9c 4k 100k",
		opts(img)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	oracle := filepath.Join(dir, "oracle.raw")
	qemuImg(t, "convert", sec, "--image-opts", "-O", "raw", opts(img), oracle)
	want, err := os.ReadFile(oracle)
	if err != nil {
		t.Fatal(err)
	}

	// Without the secret defined the data cannot be read.
	if im, err := imgtool.Open(img, &imgtool.OpenOptions{KeySecret: "gosec"}); err == nil {
		buf := make([]byte, 512)
		_, rerr := im.ReadAt(buf, 0)
		im.Close()
		if rerr == nil {
			t.Fatal("read an encrypted image without its secret")
		}
	}
	if err := imgtool.SetSecret("gosec", []byte("pw-go")); err != nil {
		t.Fatal(err)
	}
	im, err := imgtool.Open(img, &imgtool.OpenOptions{KeySecret: "gosec"})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := im.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	im.Close()
	if !bytes.Equal(got, want) {
		t.Fatal("decrypted contents differ from qemu-img convert -O raw")
	}

	dst := filepath.Join(dir, "conv.qcow2")
	err = imgtool.Convert(context.Background(), []string{img}, dst, imgtool.ConvertOptions{
		OutFormat:       "qcow2",
		Options:         map[string]string{"encrypt.format": "luks", "encrypt.key-secret": "gosec", "encrypt.iter-time": "10"},
		SourceKeySecret: "gosec",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	qemuImg(t, "check", "-q", sec, "--image-opts", opts(dst))
	qemuImg(t, "compare", "-q", sec, "--image-opts", opts(img), opts(dst))

	if err := imgtool.RemoveSecret("gosec"); err != nil {
		t.Fatal(err)
	}
	if err := imgtool.RemoveSecret("gosec"); !errors.Is(err, imgtool.ErrNotFound) {
		t.Fatalf("removing a removed secret: %v, want imgtool.ErrNotFound", err)
	}
}
