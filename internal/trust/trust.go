// Package trust keeps the login sessions PAM registered with the daemon
// (session_trust: pam). The kernel lets any process whose login uid is
// unset write it once without privilege, so an audit session proves only
// that somebody wrote a login uid; a registration proves that PAM, running
// as root during a real login, opened it. pam_exec runs
// `ipvirtctl session open` as a child of the process that called PAM, after
// pam_loginuid, so the daemon reads the session id and login uid from that
// child itself; nothing in the request is believed.
//
// Registrations are keyed on the audit session id, which the kernel draws
// from one counter per boot and never hands out twice before a reboot. So a
// registration is dropped when its session closes (PAM's close_session,
// from the process that opened it), when no process of the session is left
// (the scan), and at start-up when it was made under another boot.
package trust

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/ipvirt/ipvirt/internal/store"
)

// Registration is one registered session (see store.Registration).
type Registration = store.Registration

// Store persists registrations (package store).
type Store interface {
	PutRegistration(r Registration) error
	DeleteRegistration(id uint32) error
	DeleteRegistrationAsync(id uint32)
	Registrations() ([]Registration, []error)
}

// Registry is the set of registered sessions. It implements
// identity.Registry.
type Registry struct {
	st   Store
	boot string
	log  *slog.Logger

	// wmu serialises registering and unregistering, which write to the
	// store; mu guards m only briefly, so that Registered, on the path of
	// every QUERY, never waits for an fsync.
	wmu sync.Mutex
	mu  sync.RWMutex
	m   map[uint32]Registration
}

// Open loads the registrations persisted in st. Those made under another
// boot than boot are forgotten: their session ids now name other sessions.
func Open(st Store, boot string, log *slog.Logger) *Registry {
	r := &Registry{st: st, boot: boot, log: log, m: map[uint32]Registration{}}
	regs, bad := st.Registrations()
	for _, err := range bad {
		log.Error("damaged session registration skipped", "err", err)
	}
	stale := 0
	for _, reg := range regs {
		if reg.Boot != boot {
			stale++
			st.DeleteRegistrationAsync(reg.ID)
			continue
		}
		r.m[reg.ID] = reg
	}
	if len(regs) > 0 {
		log.Info("session registrations restored", "registered", len(r.m), "dropped_other_boot", stale)
	}
	return r
}

// Registered reports whether PAM registered audit session id.
func (r *Registry) Registered(id uint32) bool {
	r.mu.RLock()
	_, ok := r.m[id]
	r.mu.RUnlock()
	return ok
}

// Get returns the registration of session id.
func (r *Registry) Get(id uint32) (Registration, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	reg, ok := r.m[id]
	return reg, ok
}

// Len is the number of registered sessions.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.m)
}

// Register records reg (its Boot is filled in) durably, before anyone can
// be answered as a member of the session. A session already registered
// keeps its first registration (a `sudo` inside a login runs the PAM
// session stack again, from another process): existed says so.
func (r *Registry) Register(reg Registration) (got Registration, existed bool, err error) {
	reg.Boot = r.boot
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if old, ok := r.Get(reg.ID); ok {
		return old, true, nil
	}
	if err := r.st.PutRegistration(reg); err != nil {
		return Registration{}, false, fmt.Errorf("trust: persist registration of session %d: %w", reg.ID, err)
	}
	r.mu.Lock()
	r.m[reg.ID] = reg
	r.mu.Unlock()
	return reg, false, nil
}

// ErrNotRegistered is Unregister's error for a session that has no
// registration.
var ErrNotRegistered = errors.New("trust: session not registered")

// NotLeaderError is Unregister's error when the closing process is not the
// one that registered the session.
type NotLeaderError struct{ Reg Registration }

func (e *NotLeaderError) Error() string {
	return fmt.Sprintf("session %d was registered by pid %d, not by the closing process's parent: registration kept", e.Reg.ID, e.Reg.Leader)
}

// Unregister drops the registration of session id when leader (pid, start
// time) is the process that registered it: the close_session of the PAM
// stack that opened it. A close from any other process (a `sudo` or `su`
// inside the session ending) keeps it, with a *NotLeaderError.
func (r *Registry) Unregister(id uint32, leader int, leaderStart uint64) (Registration, error) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	reg, ok := r.Get(id)
	if !ok {
		return Registration{}, ErrNotRegistered
	}
	if reg.Leader != leader || reg.LeaderStart != leaderStart {
		return reg, &NotLeaderError{Reg: reg}
	}
	// Forgotten first: from now on the session is not virtualized, even
	// if the disk fails to record it (the next start drops a record whose
	// session has no process left).
	r.mu.Lock()
	delete(r.m, id)
	r.mu.Unlock()
	if err := r.st.DeleteRegistration(id); err != nil {
		return reg, fmt.Errorf("trust: forget registration of session %d: %w", id, err)
	}
	return reg, nil
}

// Prune drops the registrations of sessions live does not report, among
// those made before taken (a scan started before a registration cannot
// have seen the session, so it does not speak for it). It returns the
// registrations dropped.
func (r *Registry) Prune(live func(id uint32) bool, taken time.Time) []Registration {
	var dropped []Registration
	r.mu.Lock()
	for id, reg := range r.m {
		if reg.Registered.Before(taken) && !live(id) {
			delete(r.m, id)
			dropped = append(dropped, reg)
		}
	}
	r.mu.Unlock()
	for _, reg := range dropped {
		r.st.DeleteRegistrationAsync(reg.ID)
	}
	return dropped
}

// All returns every registration, by session id.
func (r *Registry) All() []Registration {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ids := slices.Sorted(maps.Keys(r.m))
	out := make([]Registration, 0, len(ids))
	for _, id := range ids {
		out = append(out, r.m[id])
	}
	return out
}
