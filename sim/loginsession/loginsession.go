// Package loginsession starts processes in new, real kernel login sessions,
// the way a login does: an audit session (what pam_loginuid does at every
// SSH, xrdp or console login) or a POSIX session (setsid).
//
// Audit sessions need root (CAP_AUDIT_CONTROL). The kernel keeps the login
// uid and session id per task, so the write to /proc/self/loginuid must come
// from the process that then runs the program: a Go program cannot do it
// reliably (its other threads keep the old session), so a one-line sh does
// the write and execs the program, which inherits the new session.
package loginsession

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// Kind is the kind of login session to create.
type Kind string

const (
	Audit Kind = "audit"
	POSIX Kind = "posix"
)

// AuditScript writes the login uid given as $1 and execs the rest of the
// arguments. It is exported for callers that build their own command line
// (for example to run inside a network namespace).
const AuditScript = `echo "$1" > /proc/self/loginuid || exit 97; shift; exec "$@"`

// ExitSetupFailed is the exit status of a command whose session could not be
// created (the loginuid write failed).
const ExitSetupFailed = 97

// Command returns a command that runs name with args in a new login session
// of kind for user uid. In an audit session uid becomes the session's login
// uid; the process itself keeps the caller's credentials (tests run clients
// as root inside a non-root user's session, as `sudo` inside a login does).
// Every command also gets its own POSIX session and process group, so that
// the whole session can be signalled at once.
func Command(ctx context.Context, kind Kind, uid uint32, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	switch kind {
	case Audit:
		all := append([]string{"-c", AuditScript, "sh", strconv.FormatUint(uint64(uid), 10), name}, args...)
		cmd = exec.CommandContext(ctx, "/bin/sh", all...)
	default:
		cmd = exec.CommandContext(ctx, name, args...)
	}
	// Pdeathsig: a session dies with the simulator or test that opened it,
	// even one killed with SIGKILL (its clients follow: see sim/dbclient).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return KillGroup(cmd) }
	return cmd
}

// KillGroup sends SIGKILL to the command's whole session (process group), so
// that no grandchild outlives a test.
func KillGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
}

// Available reports whether sessions of kind can be created here, and why
// not. Audit sessions need root and a kernel with audit support.
func Available(kind Kind) (bool, string) {
	if kind == POSIX {
		return true, ""
	}
	if os.Geteuid() != 0 {
		return false, "audit sessions need root (writing /proc/self/loginuid)"
	}
	if _, err := os.Stat("/proc/self/loginuid"); err != nil {
		return false, "kernel has no audit support (/proc/self/loginuid missing)"
	}
	return true, ""
}

// SessionOf returns the audit session id of pid as the kernel reports it.
func SessionOf(pid int) (uint32, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/sessionid", pid))
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	return uint32(v), err
}
