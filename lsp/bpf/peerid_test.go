package bpf

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipvirt/ipvirt/internal/cgroup"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/testenv"
)

// peerClient connects to a Unix socket and holds the connection, run in a
// login session: a real process of a real audit session, as the library
// is. One line: the session leader reads its commands line by line.
const peerClient = `import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(60)`

// peerConn is an accepted connection's SO_PEERCRED and a pidfd of its own.
type peerConn struct {
	conn  *net.UnixConn
	cred  *unix.Ucred
	pidfd identity.Pidfd
	ino   uint64
}

func peerAccept(t *testing.T, ln *net.UnixListener) peerConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	raw, _ := c.SyscallConn()
	var p peerConn
	raw.Control(func(fd uintptr) {
		p.cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		p.pidfd = identity.PeerPidfd(int(fd), p.cred.Pid)
	})
	if err != nil || !p.pidfd.Own {
		t.Fatalf("peer: cred %v, pidfd %+v: the kernel gives no pidfd of the peer", err, p.pidfd)
	}
	t.Cleanup(p.pidfd.Close)
	var st unix.Stat_t
	if err := unix.Fstat(p.pidfd.FD, &st); err != nil {
		t.Fatal(err)
	}
	p.conn, p.ino = c, st.Ino
	return p
}

func peerListen(t *testing.T, path string) *net.UnixListener {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	os.Chmod(path, 0o666)
	return ln
}

func openPeers(t *testing.T, path string) *PeerRecords {
	t.Helper()
	m, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	r, err := OpenPeerRecords(m, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// socketDir is a directory the sessions' users can reach (t.TempDir's
// parent is private to root).
func peerSocketDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "ipvirt-peerid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	return dir
}

// Each connecting process's record names its own audit session and login
// uid, as /proc does, and is handed out once, to the process that made it.
func TestRecordOfEachConnect(t *testing.T) {
	testenv.RequireRoot(t)
	path := filepath.Join(peerSocketDir(t), "ipvirt.sock")
	ln := peerListen(t, path)
	r := openPeers(t, path)
	uids := []uint32{60711, 60712, 60713}
	for _, uid := range uids {
		s := testenv.AuditSession(t, uid)
		if _, err := s.Run("python3", "-c", peerClient, path); err != nil {
			t.Fatal(err)
		}
		p := peerAccept(t, ln)
		b, err := os.ReadFile("/proc/" + strconv.Itoa(int(p.cred.Pid)) + "/sessionid")
		if err != nil {
			t.Fatal(err)
		}
		proc, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
		if uint32(proc) != s.ID {
			t.Fatalf("/proc says session %d, the login session is %d", proc, s.ID)
		}
		if _, _, ok := r.Take(p.cred.Pid, p.ino+1); ok {
			t.Fatalf("pid %d: a record was handed out for another process (pidfs inode %d, the caller's is %d)", p.cred.Pid, p.ino+1, p.ino)
		}
		// The mismatch took the record out: it could only be stale.
		if _, _, ok := r.Take(p.cred.Pid, p.ino); ok {
			t.Fatalf("pid %d: a record outlived a mismatched take", p.cred.Pid)
		}
	}
	for _, uid := range uids {
		s := testenv.AuditSession(t, uid)
		if _, err := s.Run("python3", "-c", peerClient, path); err != nil {
			t.Fatal(err)
		}
		p := peerAccept(t, ln)
		sid, luid, ok := r.Take(p.cred.Pid, p.ino)
		if !ok || sid != s.ID || luid != uid {
			t.Fatalf("pid %d of session %d (login uid %d): record %v, session %d, login uid %d", p.cred.Pid, s.ID, uid, ok, sid, luid)
		}
		if _, _, ok := r.Take(p.cred.Pid, p.ino); ok {
			t.Fatalf("pid %d: a record was handed out twice", p.cred.Pid)
		}
	}
}

// Only connections to the daemon's socket are noted, and only while the
// program is attached.
func TestOnlyTheSocketIsNoted(t *testing.T) {
	testenv.RequireRoot(t)
	dir := peerSocketDir(t)
	path, other := filepath.Join(dir, "ipvirt.sock"), filepath.Join(dir, "ipvirt.sock2")
	ln, lnOther := peerListen(t, path), peerListen(t, other)
	s := testenv.AuditSession(t, 60714)

	if _, err := s.Run("python3", "-c", peerClient, path); err != nil {
		t.Fatal(err)
	}
	before := peerAccept(t, ln)
	r := openPeers(t, path)
	if _, _, ok := r.Take(before.cred.Pid, before.ino); ok {
		t.Fatalf("a record of a connect made before Open")
	}
	if _, err := s.Run("python3", "-c", peerClient, other); err != nil {
		t.Fatal(err)
	}
	p := peerAccept(t, lnOther)
	if _, _, ok := r.Take(p.cred.Pid, p.ino); ok {
		t.Fatalf("a connect to %s was noted as one to %s", other, path)
	}
	r.Close()
	if _, err := s.Run("python3", "-c", peerClient, path); err != nil {
		t.Fatal(err)
	}
	peerAccept(t, ln) // no record to take: the table went with the program
}

// The resolver gives the same caller from a record as from /proc, and
// leaves /proc to a connection with no record.
func TestResolverUsesTheRecord(t *testing.T) {
	testenv.RequireRoot(t)
	path := filepath.Join(peerSocketDir(t), "ipvirt.sock")
	ln := peerListen(t, path)
	r := openPeers(t, path)
	s := testenv.AuditSession(t, 60715)
	for _, withRecords := range []bool{true, false} {
		if _, err := s.Run("python3", "-c", peerClient, path); err != nil {
			t.Fatal(err)
		}
		p := peerAccept(t, ln)
		res := identity.NewResolver(identity.Audit, "")
		if withRecords {
			res.Peers = r
		}
		got, err := res.ResolvePeer(p.cred, p.pidfd, false)
		if err != nil {
			t.Fatal(err)
		}
		if got.Session.ID != s.ID || got.Login != got.Session || got.SessionUID != 60715 || got.PID != int(p.cred.Pid) {
			t.Fatalf("records %v: caller %+v, want session %d of login uid 60715", withRecords, got, s.ID)
		}
		_, _, left := r.Take(p.cred.Pid, p.ino)
		if left == withRecords {
			t.Fatalf("records %v: a record left after resolving: %v", withRecords, left)
		}
	}
}
