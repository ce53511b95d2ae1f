// Package identity finds out, from the kernel alone, who is calling the
// daemon: the peer's pid/uid/gid from SO_PEERCRED, its login session (the
// audit session by default, or the POSIX session), the session's user and
// the executable. Nothing the caller says about itself is trusted.
package identity

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// Caller is a process asking the daemon for its address.
type Caller struct {
	PID      int
	UID, GID uint32 // effective credentials, from SO_PEERCRED
	Session  lease.Session
	// SessionUID is the session's user: the audit login uid (so a `sudo`
	// inside a user's session is still that user's session), or in POSIX
	// mode the caller's own uid.
	SessionUID uint32
	// Exe is the executable; empty when it was not read (ResolveFD
	// without exe: a per-session decision does not depend on it).
	Exe string
	// OutOfScope is the caller's cgroup when it lies outside the
	// resolver's Scope; Session is then the zero Session.
	OutOfScope string
	// Login is the caller's login session as the kernel shows it, before
	// the scope and session_trust are applied: what `session open`
	// registers. SessionUID is its user whenever it is valid.
	Login lease.Session
	// Unregistered says that, under session_trust: pam, Login is an audit
	// session PAM never registered (a login uid written by the process
	// itself, or a login from before the switch); Session is then the
	// zero Session, as for a service.
	Unregistered bool
}

// Kind is how a caller's login session is found.
type Kind string

const (
	// Audit uses the kernel audit session (/proc/PID/sessionid), set by
	// pam_loginuid at every login.
	Audit Kind = "audit"
	// POSIX uses the POSIX session (getsid), for hosts without audit
	// sessions and for unprivileged development.
	POSIX Kind = "posix"
)

// Trust is which audit sessions count as logins (session_trust).
type Trust string

const (
	// TrustLoginUID takes every audit session for a login. The kernel lets
	// any process whose login uid is unset (a service) write it once,
	// without privilege, so a service can make itself a session of any user.
	TrustLoginUID Trust = "loginuid"
	// TrustPAM takes only the audit sessions PAM registered with the daemon
	// (`ipvirtctl session open`, run as root by pam_exec); any other is
	// treated as session 0.
	TrustPAM Trust = "pam"
)

// Registry answers whether PAM registered an audit session (package trust
// keeps it).
type Registry interface {
	Registered(id uint32) bool
}

// Resolver turns a peer into a Caller.
type Resolver struct {
	Proc     Proc
	Identity Kind
	// Scope limits the daemon to the processes of one cgroup2 subtree
	// (a path as /proc/PID/cgroup shows it); "" is the whole host.
	// Processes outside it are in no session as far as ipvirt is
	// concerned: never virtualized, never scanned.
	Scope string
	// Registry, when set (session_trust: pam), limits login sessions to
	// the audit sessions it holds: a process of any other is in no session
	// (Caller.Unregistered), and scans skip it.
	Registry Registry
	// Peers, when set, is the kernel's record of each process connecting
	// to the daemon's socket (lsp/bpf PeerRecords): its audit session and login
	// uid, noted at connect(), used instead of reading them from /proc.
	Peers PeerRecords
	// logins remembers each audit session's login uid; nil: read it every
	// time.
	logins *loginCache
}

// PeerRecords hands out the kernel's record of a connecting process: its
// audit session and login uid. pid is the process id SO_PEERCRED gives;
// pidfsIno, the pidfs inode number of the caller's pidfd, proves the record
// is the caller's and not an earlier process's with the same pid. A record
// is handed out once.
type PeerRecords interface {
	Take(pid int32, pidfsIno uint64) (session, loginUID uint32, ok bool)
}

// peerRecord is what PeerRecords gave for a caller.
type peerRecord struct{ session, loginUID uint32 }

// NewResolver returns a resolver reading the host's /proc, limited to
// the cgroup scope ("": the whole host).
func NewResolver(id Kind, scope string) Resolver {
	return Resolver{Proc: Proc{Root: "/proc"}, Identity: id, Scope: scope, logins: newLoginCache()}
}

// Session returns the login session of pid under the configured identity.
func (r Resolver) Session(pid int) (lease.Session, error) {
	if r.Identity == POSIX {
		return r.Proc.POSIXSession(pid)
	}
	return r.Proc.AuditSession(pid)
}

// Resolve reads the session, session user and executable of pid.
func (r Resolver) Resolve(pid int, uid, gid uint32) (Caller, error) {
	c, _, err := r.resolve(pid, uid, gid, true)
	return c, err
}

// resolve also reports whether SessionUID was read from /proc/PID/loginuid
// rather than remembered. The kernel gives a process a new audit session
// id whenever its login uid is set, so a session id has one login uid for
// life: ResolveFD remembers it, once the caller is known to have outlived
// the reads, and skips a fifth of identifying the session's next process.
func (r Resolver) resolve(pid int, uid, gid uint32, exe bool) (c Caller, readLogin bool, err error) {
	return r.resolveWith(pid, uid, gid, exe, nil)
}

// resolveWith is resolve, taking the session and login uid from rec when
// there is one instead of reading them.
func (r Resolver) resolveWith(pid int, uid, gid uint32, exe bool, rec *peerRecord) (c Caller, readLogin bool, err error) {
	c = Caller{PID: pid, UID: uid, GID: gid, SessionUID: uid}
	switch {
	case rec == nil:
		if c.Login, err = r.Session(pid); err != nil {
			return Caller{}, false, fmt.Errorf("identity: session of pid %d: %w", pid, err)
		}
	case rec.session != unsetID:
		c.Login = lease.Session{Kind: lease.KindAudit, ID: rec.session}
	}
	c.Session = c.Login
	if r.Identity != POSIX && c.Login.Valid() {
		// Read before the scope and trust are applied: `session open`
		// registers the login uid of whatever session the caller is in.
		if rec != nil {
			if rec.loginUID != unsetID {
				c.SessionUID, readLogin = rec.loginUID, true
			}
		} else if luid, ok := r.logins.get(c.Login.ID); ok {
			c.SessionUID = luid
		} else {
			luid, ok, err := r.Proc.LoginUID(pid)
			if err != nil {
				return Caller{}, false, fmt.Errorf("identity: loginuid of pid %d: %w", pid, err)
			}
			if ok {
				c.SessionUID, readLogin = luid, true
			}
		}
	}
	if c.Session.Valid() {
		if in, cg := r.inScope(pid); !in {
			c.Session, c.OutOfScope = lease.Session{}, cg
		}
	}
	if c.Session.Kind == lease.KindAudit && r.Registry != nil && !r.Registry.Registered(c.Session.ID) {
		c.Session, c.Unregistered = lease.Session{}, true
	}
	if !exe {
		return c, readLogin, nil
	}
	if c.Exe, err = r.Proc.Exe(pid); err != nil {
		return Caller{}, false, fmt.Errorf("identity: executable of pid %d: %w", pid, err)
	}
	return c, readLogin, nil
}

// soPeerPIDFD is SO_PEERPIDFD (Linux 6.5), not yet in x/sys/unix.
const soPeerPIDFD = 77

// ErrCallerGone means the caller exited while it was being identified, so
// what /proc said may describe another process that reused its pid.
var ErrCallerGone = errors.New("identity: caller exited while being identified")

// ResolveConn identifies the process at the other end of a Unix socket.
//
// The pid from SO_PEERCRED is only a number: the caller could exit and the
// pid be reused while /proc is read. A pidfd pins the process; checking it is
// still alive after the reads proves they described the caller.
func (r Resolver) ResolveConn(c *net.UnixConn) (Caller, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Caller{}, fmt.Errorf("identity: %w", err)
	}
	var caller Caller
	var resErr error
	if err := raw.Control(func(fd uintptr) { caller, resErr = r.ResolveFD(int(fd), true) }); err != nil {
		return Caller{}, fmt.Errorf("identity: %w", err)
	}
	return caller, resErr
}

// ResolveFD is ResolveConn on a raw connected Unix socket. Without exe the
// executable is not read: on a small VM that readlink is a quarter of the
// identification a process's first connect waits for.
func (r Resolver) ResolveFD(fd int, exe bool) (Caller, error) {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Caller{}, fmt.Errorf("identity: SO_PEERCRED: %w", err)
	}
	return r.ResolveFDCred(fd, cred, exe)
}

// ResolveFDCred is ResolveFD for a connection whose SO_PEERCRED the caller
// has read already (the accept loop does, to count connections per uid):
// one system call fewer on the path of every first connect.
func (r Resolver) ResolveFDCred(fd int, cred *unix.Ucred, exe bool) (Caller, error) {
	pidfd := PeerPidfd(fd, cred.Pid)
	defer pidfd.Close()
	return r.ResolvePeer(cred, pidfd, exe)
}

// Pidfd is a pidfd of a connection's peer.
type Pidfd struct {
	FD int // -1: none
	// Own says it came with the connection (SO_PEERPIDFD, Linux 6.5), so
	// it pins the very process that connected; else it was opened by pid
	// afterwards, which still catches a pid reused while /proc is read, if
	// not one reused before.
	Own bool
}

// PeerPidfd returns a pidfd of the peer of the connected Unix socket fd,
// whose SO_PEERCRED pid is pid.
func PeerPidfd(fd int, pid int32) Pidfd {
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, soPeerPIDFD); err == nil {
		return Pidfd{FD: v, Own: true}
	}
	if v, err := unix.PidfdOpen(int(pid), 0); err == nil {
		return Pidfd{FD: v}
	}
	return Pidfd{FD: -1}
}

// Close closes the pidfd, if any.
func (p Pidfd) Close() {
	if p.FD >= 0 {
		unix.Close(p.FD)
	}
}

// ResolvePeer identifies the peer whose SO_PEERCRED is cred, with a pidfd
// of it from PeerPidfd, which the caller closes (the accept thread once
// its answer is out). The session and login uid come from the kernel's
// record of the connect when Peers has one of this very process, else from
// /proc, which the pidfd then proves described the caller.
func (r Resolver) ResolvePeer(cred *unix.Ucred, pidfd Pidfd, exe bool) (Caller, error) {
	var rec *peerRecord
	if pidfd.Own && r.Peers != nil && r.Identity != POSIX {
		var st unix.Stat_t
		if unix.Fstat(pidfd.FD, &st) == nil {
			if sid, luid, ok := r.Peers.Take(cred.Pid, st.Ino); ok {
				rec = &peerRecord{session: sid, loginUID: luid}
			}
		}
	}
	caller, readLogin, err := r.resolveWith(int(cred.Pid), cred.Uid, cred.Gid, exe, rec)
	if err != nil {
		return Caller{}, err
	}
	// /proc was read (for the session, the scope or the executable): it
	// described the caller only if the caller still lives.
	if pidfd.FD >= 0 && (rec == nil || exe || r.Scope != "") {
		if err := unix.PidfdSendSignal(pidfd.FD, 0, nil, 0); err != nil {
			return Caller{}, fmt.Errorf("%w (pid %d)", ErrCallerGone, cred.Pid)
		}
	}
	if readLogin && pidfd.FD >= 0 {
		// A reused pid would have shown another session's login uid.
		r.logins.put(caller.Login.ID, caller.SessionUID)
	}
	return caller, nil
}
