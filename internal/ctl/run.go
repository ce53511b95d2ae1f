package ctl

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// PreloadEnv names the environment variable that overrides where run finds
// libipvirt.so.
const PreloadEnv = "IPVIRT_PRELOAD"

// preloadCandidates lists where libipvirt.so is looked for: beside the
// ipvirtctl binary (bin/ of a build tree), then the install locations.
func preloadCandidates() []string {
	var out []string
	if p := os.Getenv(PreloadEnv); p != "" {
		return []string{p}
	}
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Dir(exe)
		out = append(out, filepath.Join(dir, "libipvirt.so"), filepath.Join(dir, "..", "lib", "ipvirt", "libipvirt.so"))
	}
	return append(out, "/usr/local/lib/ipvirt/libipvirt.so", "/usr/lib/ipvirt/libipvirt.so")
}

// run executes a command with libipvirt.so preloaded, replacing ipvirtctl
// so that signals and the exit status are the command's own.
func run(g *globals, args []string) int {
	fs, ok := g.subFlags("run", "[--] CMD [ARGS...]", "Runs CMD with the LD_PRELOAD interceptor (libipvirt.so) loaded, so that its\n"+
		"sockets use the session's VIP. The library is found through $IPVIRT_PRELOAD,\n"+
		"beside ipvirtctl, or in /usr/local/lib/ipvirt and /usr/lib/ipvirt. --socket\n"+
		"is passed on to the library as IPVIRT_SOCKET.", args)
	if !ok {
		return 2
	}
	if fs.NArg() == 0 {
		return g.usageError("run needs a command; see ipvirtctl run --help")
	}
	lib := ""
	for _, c := range preloadCandidates() {
		if _, err := os.Stat(c); err == nil {
			lib, _ = filepath.Abs(c)
			break
		}
	}
	if lib == "" {
		return g.fail(fmt.Errorf("libipvirt.so not found (looked in %v); build it with make build or set %s", preloadCandidates(), PreloadEnv))
	}
	path, err := exec.LookPath(fs.Arg(0))
	if err != nil {
		return g.fail(err)
	}
	env := os.Environ()
	preload := lib
	if prev := os.Getenv("LD_PRELOAD"); prev != "" {
		preload = lib + ":" + prev
	}
	env = append(env, "LD_PRELOAD="+preload)
	if g.socket != "" {
		env = append(env, "IPVIRT_SOCKET="+g.socket)
	}
	err = syscall.Exec(path, fs.Args(), env)
	var errno syscall.Errno
	if errors.As(err, &errno) && errno == syscall.ENOENT {
		return g.fail(fmt.Errorf("run: %s: not found", path))
	}
	return g.fail(fmt.Errorf("run: %s: %w", path, err))
}
