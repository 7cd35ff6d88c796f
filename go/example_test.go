package imgtool_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	imgtool "github.com/imgtool/imgtool-go"
)

// The example go/README.md shows; `go test` runs it.
func Example() {
	dir, err := os.MkdirTemp("", "imgtool-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	disk := filepath.Join(dir, "disk.qcow2")

	// Create a 64 MiB qcow2 image and write into it.
	err = imgtool.Create(imgtool.CreateOptions{
		Filename: disk, Format: "qcow2", Size: 64 << 20,
		Options: map[string]string{"cluster_size": "65536"},
	})
	if err != nil {
		log.Fatal(err)
	}
	img, err := imgtool.Open(disk, &imgtool.OpenOptions{Writable: true})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := img.WriteAt([]byte("hello"), 1<<20); err != nil {
		log.Fatal(err)
	}

	// *Image is an io.ReaderAt: short reads at the end return io.EOF.
	buf := make([]byte, 5)
	if _, err := img.ReadAt(buf, 1<<20); err != nil {
		log.Fatal(err)
	}
	info, err := img.Info()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s %s, %d bytes, clusters of %d\n", buf, info.Format, info.VirtualSize, info.ClusterSize)

	// Allocated runs, iterated without allocation on the C side.
	it := img.BlockStatus(0, info.VirtualSize)
	for it.Next() {
		if e := it.Extent(); e.Data {
			fmt.Printf("data at %d, %d bytes\n", e.Start, e.Length)
		}
	}
	if err := it.Err(); err != nil {
		log.Fatal(err)
	}
	if err := img.Close(); err != nil {
		log.Fatal(err)
	}

	// Convert with a deadline; a cancelled conversion removes its output.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = imgtool.Convert(ctx, []string{disk}, filepath.Join(dir, "disk.raw"),
		imgtool.ConvertOptions{OutFormat: "raw"}, func(pct float64) { /* report pct */ })
	if errors.Is(err, context.DeadlineExceeded) {
		log.Fatal("too slow")
	} else if err != nil {
		log.Fatal(err)
	}

	// Check (and repair with Repair: imgtool.RepairLeaks / RepairAll).
	report, err := imgtool.Check(disk, imgtool.CheckOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("check exit status", report.ExitCode, "leaks", report.Leaks)

	// Errors carry the code and qemu-img's message.
	_, err = imgtool.Open(filepath.Join(dir, "missing.qcow2"), nil)
	fmt.Println(errors.Is(err, imgtool.ErrNotFound), errors.Is(err, os.ErrNotExist))
	// Output:
	// hello qcow2, 67108864 bytes, clusters of 65536
	// data at 1048576, 65536 bytes
	// check exit status 0 leaks 0
	// true true
}
