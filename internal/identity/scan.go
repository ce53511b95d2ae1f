package identity

import (
	"os"
	"strconv"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// SessionInfo is what a scan of /proc found about one live login session.
type SessionInfo struct {
	Session lease.Session
	UID     uint32 // the session's user
	Procs   int
	// Programs counts the session's processes per executable path; filled
	// only by scans that ask for it (per-program holders exist).
	Programs map[string]int
}

// Snapshot is the set of live login sessions at one moment.
type Snapshot struct {
	Sessions map[lease.Session]*SessionInfo
	// Live holds every audit session with a live process, whether in the
	// scope or not, registered or not: a session's PAM registration is
	// dropped once it is not here. Nil when the scan did not look (POSIX
	// sessions, stand-in scanners).
	Live map[uint32]bool
}

// Alive reports whether h still has a process: its session has one, and in
// per-program mode one of them runs the program.
func (s Snapshot) Alive(h lease.Holder) bool {
	info, ok := s.Sessions[h.Session]
	if !ok {
		return false
	}
	if h.Program == "" {
		return true
	}
	return info.Programs[h.Program] > 0
}

// Scan walks /proc once and groups processes by login session (under
// session_trust: pam, registered sessions only). Processes that vanish
// mid-scan are skipped: a scan is a snapshot of a moving system, and a
// holder missed by one scan is only released after the grace period, by
// which time later scans have seen it again.
func (r Resolver) Scan(withPrograms bool) (Snapshot, error) {
	d, err := os.Open(r.Proc.Root)
	if err != nil {
		return Snapshot{}, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return Snapshot{}, err
	}
	snap := Snapshot{Sessions: map[lease.Session]*SessionInfo{}}
	if r.Identity != POSIX {
		snap.Live = map[uint32]bool{}
	}
	// unregistered remembers, for this scan, the sessions the registry
	// does not hold, so that each is looked up once.
	var unregistered map[lease.Session]bool
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue
		}
		// One read of stat gives the POSIX session and tells zombies apart:
		// an exited process whose parent never reaps it must not keep a
		// VIP held forever.
		st, err := r.Proc.Stat(pid)
		if err != nil || st.Dead() {
			continue
		}
		var sess lease.Session
		if r.Identity == POSIX {
			if st.Session > 1 {
				sess = lease.Session{Kind: lease.KindPOSIX, ID: uint32(st.Session)}
			}
		} else if sess, err = r.Proc.AuditSession(pid); err != nil {
			continue
		}
		if !sess.Valid() {
			continue
		}
		if snap.Live != nil {
			snap.Live[sess.ID] = true
		}
		if in, _ := r.inScope(pid); !in {
			continue
		}
		info := snap.Sessions[sess]
		if info == nil && r.Registry != nil && sess.Kind == lease.KindAudit {
			if unregistered[sess] {
				continue
			}
			if !r.Registry.Registered(sess.ID) {
				if unregistered == nil {
					unregistered = map[lease.Session]bool{}
				}
				unregistered[sess] = true
				continue
			}
		}
		if info == nil {
			uid, ok := r.sessionUID(pid)
			if !ok {
				continue
			}
			info = &SessionInfo{Session: sess, UID: uid}
			if withPrograms {
				info.Programs = map[string]int{}
			}
			snap.Sessions[sess] = info
		}
		info.Procs++
		if withPrograms {
			if exe, err := r.Proc.Exe(pid); err == nil {
				info.Programs[exe]++
			}
		}
	}
	return snap, nil
}

// sessionUID is the user a session belongs to, read from one of its
// processes: the audit login uid, or in POSIX mode the process owner.
func (r Resolver) sessionUID(pid int) (uint32, bool) {
	if r.Identity != POSIX {
		uid, ok, err := r.Proc.LoginUID(pid)
		return uid, ok && err == nil
	}
	uid, err := r.Proc.Owner(pid)
	return uid, err == nil
}
