package identity

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// unsetID is what the kernel shows in /proc/PID/sessionid and loginuid for a
// process in no audit session: (u32)-1.
const unsetID = 4294967295

// Proc reads process facts from a procfs mount. Root is "/proc" except in
// tests that point it elsewhere.
type Proc struct {
	Root string
}

// readSmall reads a small /proc file with one read into a stack buffer:
// os.ReadFile would stat and allocate for every call on the request path.
func (p Proc) readSmall(pid int, name string, buf []byte) ([]byte, error) {
	path := p.Root + "/" + strconv.Itoa(pid) + "/" + name
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	n, err := syscall.Read(fd, buf)
	if err != nil {
		return nil, &os.PathError{Op: "read", Path: path, Err: err}
	}
	return buf[:n], nil
}

func (p Proc) readUint32(pid int, name string) (uint32, error) {
	var buf [32]byte
	b, err := p.readSmall(pid, name, buf[:])
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("identity: /proc/%d/%s: %w", pid, name, err)
	}
	return uint32(v), nil
}

// AuditSession returns the audit session of pid, or the zero Session when the
// process is in none.
func (p Proc) AuditSession(pid int) (lease.Session, error) {
	id, err := p.readUint32(pid, "sessionid")
	if err != nil {
		return lease.Session{}, err
	}
	if id == unsetID {
		return lease.Session{}, nil
	}
	return lease.Session{Kind: lease.KindAudit, ID: id}, nil
}

// LoginUID returns the audit login uid of pid; ok is false when unset.
func (p Proc) LoginUID(pid int) (uid uint32, ok bool, err error) {
	v, err := p.readUint32(pid, "loginuid")
	if err != nil {
		return 0, false, err
	}
	return v, v != unsetID, nil
}

// Stat is the part of /proc/PID/stat the daemon needs.
type Stat struct {
	State     byte // R, S, D, Z (zombie), X (dead), ...
	PPID      int
	Session   int
	StartTime uint64 // clock ticks since boot
}

// Dead reports whether the process has exited and only awaits reaping.
func (s Stat) Dead() bool { return s.State == 'Z' || s.State == 'X' }

// Stat parses /proc/PID/stat. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from the last ')'.
func (p Proc) Stat(pid int) (Stat, error) {
	var buf [1024]byte
	b, err := p.readSmall(pid, "stat", buf[:])
	if err != nil {
		return Stat{}, err
	}
	return parseStat(b)
}

func parseStat(b []byte) (Stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, errors.New("identity: stat: no command name")
	}
	// After ") ": state(3) ppid(4) pgrp(5) session(6) ... starttime(22).
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return Stat{}, fmt.Errorf("identity: stat: %d fields after the command name", len(f))
	}
	ppid, err1 := strconv.Atoi(f[1])
	sid, err2 := strconv.Atoi(f[3])
	start, err3 := strconv.ParseUint(f[19], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return Stat{}, fmt.Errorf("identity: stat: %w", err)
	}
	// Both are pids (pid_t): a value outside 0..2^31-1 is no process,
	// and a session id is later cut to the 32 bits of lease.Session, where
	// 4294967298 would have become session 2.
	for _, v := range []struct {
		name string
		v    int
	}{{"ppid", ppid}, {"session", sid}} {
		if v.v < 0 || v.v > math.MaxInt32 {
			return Stat{}, fmt.Errorf("identity: stat: %s %d is not a pid", v.name, v.v)
		}
	}
	return Stat{State: f[0][0], PPID: ppid, Session: sid, StartTime: start}, nil
}

// POSIXSession returns the POSIX session of pid. Session 0 (kernel threads)
// and 1 (init's own session, where services that never call setsid live)
// count as no session.
func (p Proc) POSIXSession(pid int) (lease.Session, error) {
	var sid int
	if p.Root == "/proc" {
		// getsid(2) is a few times cheaper than reading /proc/PID/stat of a
		// process that just started, and this is on every first connect.
		var err error
		if sid, err = unix.Getsid(pid); err != nil {
			if errors.Is(err, unix.ESRCH) {
				err = syscall.ENOENT // the process is gone, as a /proc read says it
			}
			return lease.Session{}, &os.PathError{Op: "getsid", Path: strconv.Itoa(pid), Err: err}
		}
	} else {
		st, err := p.Stat(pid)
		if err != nil {
			return lease.Session{}, err
		}
		sid = st.Session
	}
	if sid <= 1 {
		return lease.Session{}, nil
	}
	return lease.Session{Kind: lease.KindPOSIX, ID: uint32(sid)}, nil
}

// Exe returns the path of pid's executable. A binary replaced or removed
// since the process started reads as "PATH (deleted)"; the suffix is cut so
// that the program still matches its configured path.
func (p Proc) Exe(pid int) (string, error) {
	path, err := os.Readlink(p.Root + "/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(path, " (deleted)"), nil
}

// Owner returns the uid owning /proc/PID: the process's effective uid.
func (p Proc) Owner(pid int) (uint32, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(p.Root+"/"+strconv.Itoa(pid), &st); err != nil {
		return 0, err
	}
	return st.Uid, nil
}

// UIDs are a process's real, effective, saved and filesystem uids.
type UIDs struct{ Real, Effective, Saved, FS uint32 }

// UIDs reads the Uid line of /proc/PID/status. SO_PEERCRED gives only the
// effective uid; a set-uid program a user started (su) has the user's real
// uid beside an effective 0.
func (p Proc) UIDs(pid int) (UIDs, error) {
	var buf [4096]byte
	b, err := p.readSmall(pid, "status", buf[:])
	if err != nil {
		return UIDs{}, err
	}
	return parseStatusUIDs(b)
}

func parseStatusUIDs(b []byte) (UIDs, error) {
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		rest, ok := bytes.CutPrefix(line, []byte("Uid:"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) != 4 {
			return UIDs{}, fmt.Errorf("identity: status: Uid line has %d fields, want 4", len(f))
		}
		var v [4]uint32
		for i, s := range f {
			n, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return UIDs{}, fmt.Errorf("identity: status: Uid: %w", err)
			}
			v[i] = uint32(n)
		}
		return UIDs{Real: v[0], Effective: v[1], Saved: v[2], FS: v[3]}, nil
	}
	return UIDs{}, errors.New("identity: status: no Uid line")
}
