package benchkit

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ipvirt/ipvirt/sim/loginsession"
)

var outSeq atomic.Int64

// OutPath names a fresh result file in dir for a program that writes one
// (connectloop's OUT argument).
func OutPath(dir string) string {
	return filepath.Join(dir, fmt.Sprintf("out-%d-%d", os.Getpid(), outSeq.Add(1)))
}

// RunIn runs prog inside the login session with env added and OUT (a
// fresh file in dir) as its last argument, and returns what it wrote
// there. Its standard error goes to OUT.err, quoted when it fails.
func RunIn(s *loginsession.Session, dir string, env []string, prog string, args ...string) (string, error) {
	out := OutPath(dir)
	pid, err := s.RunEnvStderr(env, out+".err", prog, append(args, out)...)
	if err != nil {
		return "", fmt.Errorf("start %s in session %d: %w", filepath.Base(prog), s.ID, err)
	}
	return WaitOut(s, pid, out, 5*time.Minute)
}

// WaitOut waits for pid (a program of s) to write out, reaps it, and
// returns the file's content.
func WaitOut(s *loginsession.Session, pid int, out string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		if b, err := os.ReadFile(out); err == nil {
			s.Reap(pid)
			return string(b), nil
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH || exitedZombie(pid) || time.Now().After(deadline) {
			s.Reap(pid)
			// It may have renamed its result into place and exited
			// between the read above and the check.
			if b, err := os.ReadFile(out); err == nil {
				return string(b), nil
			}
			msg, _ := os.ReadFile(out + ".err")
			return "", fmt.Errorf("pid %d wrote no result to %s: %s", pid, out, strings.TrimSpace(string(msg)))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// exitedZombie reports whether pid has exited and waits for its parent
// (the session's shell) to reap it.
func exitedZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// ParseLoop reads connectloop's "MODE NS_PER_OP SOURCE" line.
func ParseLoop(line string) (nsPerOp float64, src netip.Addr, err error) {
	f := strings.Fields(line)
	if len(f) != 3 {
		return 0, netip.Addr{}, fmt.Errorf("connectloop said %q", line)
	}
	if _, err := fmt.Sscan(f[1], &nsPerOp); err != nil {
		return 0, netip.Addr{}, fmt.Errorf("connectloop said %q: %w", line, err)
	}
	if src, err = netip.ParseAddr(f[2]); err != nil {
		return 0, netip.Addr{}, fmt.Errorf("connectloop said %q: %w", line, err)
	}
	return nsPerOp, src, nil
}
