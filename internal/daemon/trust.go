package daemon

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ipvirt/ipvirt/backend/api"
	"github.com/ipvirt/ipvirt/internal/alloc"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/internal/server"
	"github.com/ipvirt/ipvirt/internal/trust"
)

// Session registration (session_trust, README "Sessions and users"). PAM
// runs `ipvirtctl session open` through pam_exec, as root, as a child of
// the process that called PAM (sshd's session process, login, cron) after
// pam_loginuid gave that process its audit session. So the daemon takes
// the session from the caller's own /proc entries, and the caller's parent
// as the session's leader: only the leader's close_session unregisters it.

// pruningScanner is the daemon's session scan: after each, registrations of
// sessions with no process left anywhere on the host are dropped, so the
// table holds live logins only.
type pruningScanner struct {
	alloc.Scanner
	d *Daemon
}

func (s pruningScanner) Scan(withPrograms bool) (identity.Snapshot, error) {
	taken := time.Now()
	snap, err := s.Scanner.Scan(withPrograms)
	if err != nil || snap.Live == nil {
		return snap, err
	}
	for _, reg := range s.d.registry.Prune(func(id uint32) bool { return snap.Live[id] }, taken) {
		s.d.log.Info("session registration dropped: no process of the session is left",
			"session", audit(reg.ID).String(), "uid", reg.UID, "leader", reg.Leader)
	}
	return snap, nil
}

func audit(id uint32) lease.Session { return lease.Session{Kind: lease.KindAudit, ID: id} }

// registrar checks the process asking to register or unregister its
// session and returns its parent, by pid and start time: the process that
// called PAM, the session's leader.
//
// The server let only a peer with effective uid 0 this far; its real uid
// must be 0 too. A set-uid program a user starts (su, pkexec) runs the
// session stack with an effective 0 beside the user's real uid, and
// pam_exec's child keeps both: registering from there would let anyone who
// knows one password (su to their own account) register a session they
// forged.
//
// The caller was identified with a pidfd, these reads were not; the
// caller's session is read again after them, so that a pid reused
// meanwhile would have to be in the same session to pass. The leader must
// be in the session too: a parent outside it (the caller was orphaned, or
// did not come from the PAM stack that opened the session) could never
// close it.
func (d *Daemon) registrar(c identity.Caller) (int, uint64, error) {
	if c.Login.Kind != lease.KindAudit {
		return 0, 0, fmt.Errorf("pid %d is in no audit session (/proc/%d/sessionid is unset, or session_identity is posix): "+
			"pam_loginuid must run before pam_exec in the session stack", c.PID, c.PID)
	}
	proc := d.resolver.Proc
	uids, err := proc.UIDs(c.PID)
	if err != nil {
		return 0, 0, fmt.Errorf("read pid %d: %w", c.PID, err)
	}
	if uids.Real != 0 {
		return 0, 0, fmt.Errorf("%w: pid %d has real uid %d; only a process whose real and effective uids are 0 may "+
			"(a set-uid program started by a user, such as su, may not)", server.ErrNotPermitted, c.PID, uids.Real)
	}
	st, err := proc.Stat(c.PID)
	if err != nil {
		return 0, 0, fmt.Errorf("read pid %d: %w", c.PID, err)
	}
	ls, err := proc.Stat(st.PPID)
	if err != nil {
		return 0, 0, fmt.Errorf("read pid %d's parent %d: %w", c.PID, st.PPID, err)
	}
	if again, err := proc.AuditSession(c.PID); err != nil || again != c.Login {
		return 0, 0, fmt.Errorf("%w (pid %d)", identity.ErrCallerGone, c.PID)
	}
	if ps, err := proc.AuditSession(st.PPID); err != nil || ps != c.Login {
		return 0, 0, fmt.Errorf("pid %d's parent %d is not in audit session %d: run it from the PAM stack (pam_exec) of the process that opened the session", c.PID, st.PPID, c.Login.ID)
	}
	return st.PPID, ls.StartTime, nil
}

func (d *Daemon) report(c identity.Caller, reg trust.Registration, result string) api.RegistrationReport {
	return api.RegistrationReport{Session: c.Login.String(), ID: c.Login.ID, UID: c.SessionUID,
		User: d.users.Name(c.SessionUID), Leader: reg.Leader, Registered: reg.Registered, Result: result}
}

// OpenSession implements server.Backend. Registrations are taken under
// either session_trust, so that sessions that log in after the PAM lines
// are installed keep their VIPs when the host later switches to pam.
func (d *Daemon) OpenSession(c identity.Caller, note string) (api.RegistrationReport, error) {
	leader, start, err := d.registrar(c)
	if err != nil {
		return api.RegistrationReport{}, err
	}
	if d.stock != nil {
		d.stock.regMu.Lock()
		defer d.stock.regMu.Unlock()
	}
	reg, existed, err := d.registry.Register(trust.Registration{ID: c.Login.ID, UID: c.SessionUID,
		Leader: leader, LeaderStart: start, Registered: time.Now()})
	if err != nil {
		return api.RegistrationReport{}, err
	}
	if existed {
		d.log.Info("login session already registered; first registration kept", "session", c.Login.String(),
			"leader", reg.Leader, "pid", c.PID, "by", leader, "pam", note)
		return d.report(c, reg, "already registered"), nil
	}
	if d.stock != nil {
		// Before PAM goes on to start the user's shell: its first
		// connect takes a VIP in the kernel.
		if err := d.kernel.ic.Register(c.Login.ID, true); err != nil {
			d.log.Error("kernel interceptor: register session", "session", c.Login.String(), "err", err)
		}
	}
	d.log.Info("login session registered", "session", c.Login.String(), "uid", c.SessionUID,
		"user", d.users.Name(c.SessionUID), "leader", leader, "pid", c.PID, "pam", note)
	d.preallocateRegistered(c)
	return d.report(c, reg, "registered"), nil
}

// preallocateRegistered starts the new session's acquisition now, rather
// than at the next scan, when pre-allocation is on and the session is in
// the daemon's scope.
func (d *Daemon) preallocateRegistered(c identity.Caller) {
	if !d.mgr.Settings().Prealloc || c.OutOfScope != "" {
		return
	}
	d.mgr.Ensure(c.Login, c.SessionUID, "")
}

// CloseSession implements server.Backend. Closing a session that is not
// registered (it opened before the PAM lines were installed, or before the
// daemon ran) is no error: a logout must never fail on ipvirt's account.
func (d *Daemon) CloseSession(c identity.Caller, note string) (api.RegistrationReport, error) {
	leader, start, err := d.registrar(c)
	if err != nil {
		return api.RegistrationReport{}, err
	}
	if d.stock != nil {
		d.stock.regMu.Lock()
		defer d.stock.regMu.Unlock()
	}
	reg, err := d.registry.Unregister(c.Login.ID, leader, start)
	var notLeader *trust.NotLeaderError
	switch {
	case errors.Is(err, trust.ErrNotRegistered):
		return d.report(c, trust.Registration{}, "not registered"), nil
	case errors.As(err, &notLeader):
		d.log.Info("login session close from another process than its leader; registration kept",
			"session", c.Login.String(), "leader", reg.Leader, "by", leader, "pid", c.PID, "pam", note)
		return d.report(c, reg, "kept"), nil
	case err != nil:
		return api.RegistrationReport{}, err
	}
	if d.stock != nil {
		d.kernel.ic.Register(c.Login.ID, false)
	}
	d.log.Info("login session unregistered", "session", c.Login.String(), "uid", reg.UID, "leader", leader,
		"pid", c.PID, "pam", note)
	return d.report(c, reg, "unregistered"), nil
}

// unregisteredLog names each forged or unregistered session in the log
// once, however many of its processes ask, and at most
// unregisteredPerMinute sessions a minute: a service can forge a new
// session with every process it starts, and must not flood the log.
type unregisteredLog struct {
	mu         sync.Mutex
	seen       map[uint32]bool
	window     time.Time // start of the current minute
	logged     int       // sessions named in it
	suppressed int       // sessions not named in it
}

const (
	// maxUnregisteredSeen bounds the set; past it the set starts over,
	// and a session may be named a second time.
	maxUnregisteredSeen   = 1 << 16
	unregisteredPerMinute = 60
)

// noteUnregistered logs a's caller when it was answered as session 0 for
// an unregistered session.
func (d *Daemon) noteUnregistered(c identity.Caller, a alloc.Answer) {
	if a.Rule != policy.RuleUnregistered {
		return
	}
	u := &d.unregistered
	now := time.Now()
	u.mu.Lock()
	if u.seen == nil || len(u.seen) >= maxUnregisteredSeen {
		u.seen = map[uint32]bool{}
	}
	if u.seen[c.Login.ID] {
		u.mu.Unlock()
		return
	}
	u.seen[c.Login.ID] = true
	suppressed := 0
	if now.Sub(u.window) >= time.Minute {
		suppressed, u.window, u.logged, u.suppressed = u.suppressed, now, 0, 0
	}
	quiet := u.logged >= unregisteredPerMinute
	if quiet {
		u.suppressed++
	} else {
		u.logged++
	}
	u.mu.Unlock()
	if suppressed > 0 {
		d.log.Warn("forged or unregistered login sessions not named in the last minute", "sessions", suppressed)
	}
	if quiet {
		return
	}
	exe := c.Exe
	if exe == "" {
		exe, _ = d.resolver.Proc.Exe(c.PID)
	}
	d.log.Warn("forged or unregistered login session: not virtualized", "rule", string(a.Rule),
		"session", c.Login.String(), "loginuid", c.SessionUID, "pid", c.PID, "uid", c.UID, "exe", exe)
}
