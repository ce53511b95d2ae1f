package benchkit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
)

// Tools are the built programs, all in one temporary directory.
type Tools struct {
	Loop      string // bench/connectloop/connectloop
	Noopd     string // bench/connectloop/noopd
	ForceBind string // bench/connectloop/forcebind.so
	NoSys     string // bench/connectloop/nosys.so
	Lib       string // libipvirt.so: $IPVIRT_BIN's (make bench builds it), else built here
}

// Build compiles bench/connectloop's programs into work, and libipvirt.so
// too unless $IPVIRT_BIN has one. It runs from the repository root, as
// `make bench` and `go run ./bench/X` do.
func Build(work string) (Tools, error) {
	t := Tools{
		Loop:      filepath.Join(work, "connectloop"),
		Noopd:     filepath.Join(work, "noopd"),
		ForceBind: filepath.Join(work, "forcebind.so"),
		NoSys:     filepath.Join(work, "nosys.so"),
		Lib:       filepath.Join(work, "libipvirt.so"),
	}
	if out, err := exec.Command("make", "-s", "-C", "bench/connectloop", "OUT="+work).CombinedOutput(); err != nil {
		return t, fmt.Errorf("build bench/connectloop (run from the repository root): %v\n%s", err, out)
	}
	if dir := os.Getenv(daemonproc.BinEnv); dir != "" {
		if p := filepath.Join(dir, "libipvirt.so"); exists(p) {
			t.Lib = p
			return t, nil
		}
	}
	if out, err := exec.Command("make", "-s", "-C", "lsp/preload", "OUT="+work).CombinedOutput(); err != nil {
		return t, fmt.Errorf("build libipvirt.so: %v\n%s", err, out)
	}
	return t, nil
}

// WorkDir makes a temporary directory that other users can read and run
// programs from (the veth variants run the loop as an unprivileged uid),
// with a world-writable sticky subdirectory for their results.
func WorkDir() (work, results string, err error) {
	work, err = os.MkdirTemp("", "ipvirt-bench-")
	if err != nil {
		return "", "", fmt.Errorf("work directory: %w", err)
	}
	results = filepath.Join(work, "out")
	if err := os.Mkdir(results, 0o755); err != nil {
		os.RemoveAll(work)
		return "", "", fmt.Errorf("work directory: %w", err)
	}
	// Chmod after the fact: MkdirTemp's 0700 and the umask are not ours to keep.
	if err := os.Chmod(work, 0o755); err == nil {
		err = os.Chmod(results, 0o1777)
	}
	if err != nil {
		os.RemoveAll(work)
		return "", "", fmt.Errorf("work directory: %w", err)
	}
	return work, results, nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }
