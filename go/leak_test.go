package imgtool_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	imgtool "github.com/imgtool/imgtool-go"
)

// With IMGTOOL_GO_DEBUG_LEAKS=1 an Image collected without Close is
// reported on stderr (and not closed behind the caller's back). The check
// runs in a child process, since the setting is read at start-up.
func TestLeakReport(t *testing.T) {
	if path := os.Getenv("IMGTOOL_GO_LEAK_CHILD"); path != "" {
		func() {
			if _, err := imgtool.Open(path, nil); err != nil {
				t.Fatal(err)
			}
		}()
		for i := 0; i < 20; i++ {
			runtime.GC()
			time.Sleep(10 * time.Millisecond)
		}
		return
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "leak.raw")
	qemuImg(t, "create", "-q", "-f", "raw", path, "1M")
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeakReport$", "-test.v")
	cmd.Env = append(os.Environ(), "IMGTOOL_GO_DEBUG_LEAKS=1", "IMGTOOL_GO_LEAK_CHILD="+path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `imgtool: Image "`+path+`" was garbage-collected without Close`) {
		t.Fatalf("no leak report:\n%s", out)
	}
}
