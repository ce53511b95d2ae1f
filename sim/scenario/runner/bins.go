package runner

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
)

// binaries are the programs a run needs, found once.
type binaries struct {
	IPVirtd, IPVirtctl, Sim string // Go programs
	Preload, DBClient       string // C: libipvirt.so, ipvirt-dbclient
}

var (
	binOnce sync.Once
	found   binaries
	binErr  error
)

// findBinaries locates the programs in $IPVIRT_BIN (what `make` builds into
// bin/), beside the running executable, or builds them into a temporary
// directory (go build for Go, make for C) so that `go test` works alone.
func findBinaries() (binaries, error) {
	binOnce.Do(func() { found, binErr = lookBinaries() })
	return found, binErr
}

func lookBinaries() (binaries, error) {
	var b binaries
	var err error
	for _, p := range []struct {
		dst  *string
		name string
	}{{&b.IPVirtd, "ipvirtd"}, {&b.IPVirtctl, "ipvirtctl"}, {&b.Sim, "ipvirt-sim"}} {
		if *p.dst, err = daemonproc.Binary(p.name); err != nil {
			return b, err
		}
	}
	if b.Preload, err = cBinary("libipvirt.so", "lsp/preload"); err != nil {
		return b, err
	}
	if b.DBClient, err = cBinary("ipvirt-dbclient", "sim/dbclient"); err != nil {
		return b, err
	}
	return b, nil
}

func cBinary(name, srcDir string) (string, error) {
	var dirs []string
	if d := os.Getenv("IPVIRT_BIN"); d != "" {
		dirs = append(dirs, d)
	}
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(exe))
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	root, err := daemonproc.ModuleRoot()
	if err != nil {
		return "", fmt.Errorf("scenario: %s not found in $IPVIRT_BIN or beside %s, and no source tree to build it: %w", name, os.Args[0], err)
	}
	out, err := os.MkdirTemp("", "ipvirt-bin-")
	if err != nil {
		return "", err
	}
	cmd := exec.Command("make", "--no-print-directory", "-C", filepath.Join(root, srcDir), "OUT="+out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("scenario: build %s: %w\n%s", name, err, msg)
	}
	return filepath.Join(out, name), nil
}

// install copies src to dir/name, so that a client runs under the program
// path the scenario names (per-program mode keys on it).
func install(src, dir, name string) (string, error) {
	dst := filepath.Join(dir, name)
	b, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		return "", err
	}
	return dst, nil
}
