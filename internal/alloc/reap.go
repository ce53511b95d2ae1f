package alloc

import (
	"context"
	"net/netip"
	"time"

	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
)

// Why leases are released, as metric labels.
const (
	ReleaseEnded    = "holder-ended"
	ReleaseDown     = "ended-while-down"
	ReleaseReboot   = "host-rebooted"
	ReleaseAdmin    = "admin"
	ReleaseLost     = "lost"
	ReleaseConflict = "conflict"
	// ReleaseSourceChanged: the lease came from a source no longer configured.
	ReleaseSourceChanged = "source-changed"
	// ReleaseStock: a stock lease the daemon no longer keeps ready.
	ReleaseStock = "stock"
)

// Run scans for ended holders every interval until ctx is done.
func (m *Manager) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.ScanOnce()
		}
	}
}

// ScanOnce scans /proc once and reaps. Exported so tests and the start-up
// path can drive it step by step.
func (m *Manager) ScanOnce() {
	taken := m.opts.Now()
	snap, err := m.opts.Scanner.Scan(m.needPrograms())
	if err != nil {
		m.log.Error("session scan failed", "err", err)
		return
	}
	m.Reap(snap, taken)
	if m.guard != nil {
		ctx, cancel := context.WithTimeout(context.Background(), m.opts.AcquireTimeout)
		m.sweep(ctx)
		cancel()
	}
}

// needPrograms reports whether scans must read every process's executable:
// only per-program holders (existing, or to pre-allocate) need it.
func (m *Manager) needPrograms() bool {
	s := m.settings.Load()
	if s.Policy.Mode == policy.PerProgram && s.Policy.Enabled {
		return true
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	for h := range m.holders {
		if h.PerProgram() {
			return true
		}
	}
	return false
}

// Reap applies a scan taken at time taken: holders it does not show are
// marked gone, and released once gone for the grace period. Holders created
// after the scan started are left alone (the scan could not see them).
func (m *Manager) Reap(snap identity.Snapshot, taken time.Time) {
	m.reap(snap, taken, true)
}

// reap is Reap, pre-allocating only when prealloc is set (Restore defers
// it to Preallocate, after the start-up cross-check).
func (m *Manager) reap(snap identity.Snapshot, taken time.Time, prealloc bool) {
	now := m.opts.Now()
	s := m.settings.Load()
	var ended []lease.Holder
	m.mu.Lock()
	for h, e := range m.holders {
		if !e.done() || e.created.After(taken) || h.Session.Stock() {
			continue // stock places have no processes: the daemon keeps them
		}
		if snap.Alive(h) {
			delete(m.gone, h)
			continue
		}
		since, ok := m.gone[h]
		if !ok {
			since = now
			m.gone[h] = since
		}
		if now.Sub(since) >= s.Grace {
			ended = append(ended, h)
		}
	}
	for sess := range m.seen {
		if _, ok := snap.Sessions[sess]; !ok {
			delete(m.seen, sess)
		}
	}
	for sess := range snap.Sessions {
		if _, ok := m.seen[sess]; !ok {
			m.seen[sess] = now
		}
	}
	for h := range m.outcomes {
		if !snap.Alive(h) {
			delete(m.outcomes, h)
		}
	}
	m.snap = snap
	m.mu.Unlock()

	for _, h := range ended {
		m.release(h, ReleaseEnded)
	}
	if s.Prealloc && prealloc {
		m.preallocate(s, snap)
	}
}

// Preallocate starts the acquisitions a scan would for the sessions the
// last one saw (Restore's), when pre-allocation is on. The daemon calls it
// once start-up has adopted every holder the kernel shows, so that no
// pre-allocation races a holder found by the evidence.
func (m *Manager) Preallocate() {
	s := m.settings.Load()
	if !s.Prealloc {
		return
	}
	m.mu.RLock()
	snap := m.snap
	m.mu.RUnlock()
	m.preallocate(s, snap)
}

// preallocate starts acquisitions for holders a scan shows that have no
// lease yet: every non-admin session in per-session mode, every listed
// program in per-program mode.
func (m *Manager) preallocate(s *Settings, snap identity.Snapshot) {
	if !s.Policy.Enabled {
		return
	}
	for sess, info := range snap.Sessions {
		if m.isAdmin(info.UID, s.Admins) {
			continue
		}
		if s.Policy.Mode == policy.PerSession {
			m.ensure(lease.Holder{Session: sess}, info.UID)
			continue
		}
		for prog := range info.Programs {
			if s.Policy.Programs[prog] {
				m.ensure(lease.Holder{Session: sess, Program: prog}, info.UID)
			}
		}
	}
}

// Ensure acquires a VIP for a holder nobody has asked for yet (a session the
// kernel interceptor just saw start), in the background.
func (m *Manager) Ensure(sess lease.Session, uid uint32, program string) {
	s := m.settings.Load()
	if !s.Policy.Enabled || !sess.Valid() || m.isAdmin(uid, s.Admins) {
		return
	}
	h := lease.Holder{Session: sess}
	if s.Policy.Mode == policy.PerProgram {
		if !s.Policy.Programs[program] {
			return
		}
		h.Program = program
	}
	m.ensure(h, uid)
}

// preallocRetry is how long a holder whose acquisition failed waits before
// scans try again on its behalf. Without retries a session whose lease
// expired while the DHCP server was down would stay unvirtualized under
// the kernel interceptor, which never asks; retrying on every scan would
// hammer a server that is out of addresses.
const preallocRetry = 5 * time.Second

func (m *Manager) ensure(h lease.Holder, uid uint32) {
	m.mu.RLock()
	_, has := m.holders[h]
	o, failed := m.outcomes[h]
	m.mu.RUnlock()
	if has || failed && m.opts.Now().Sub(o.at) < preallocRetry {
		return
	}
	if _, busy := m.prealloc.LoadOrStore(h, true); busy {
		return
	}
	go func() {
		defer m.prealloc.Delete(h)
		ctx, cancel := context.WithTimeout(context.Background(), m.opts.AcquireTimeout)
		defer cancel()
		if _, err := m.leaseFor(ctx, h, uid); err != nil {
			m.mu.Lock()
			m.outcomes[h] = outcome{reason: "no virtual IP available: " + err.Error(), at: m.opts.Now()}
			m.mu.Unlock()
			m.log.Warn("pre-allocation failed", "holder", h.Key(), "err", err)
		}
	}()
}

// Renewed implements source.Events: a DHCP lease was renewed.
func (m *Manager) Renewed(l lease.Lease) {
	m.mu.Lock()
	e := m.holders[l.Holder]
	if e == nil || !e.done() || e.err != nil || e.lease.Addr != l.Addr {
		m.mu.Unlock()
		return
	}
	l.UID, l.Granted = e.lease.UID, e.lease.Granted
	e.lease = l
	m.mu.Unlock()
	if err := m.opts.Store.Put(l); err != nil {
		m.log.Error("persist renewed lease", "holder", l.Holder.Key(), "vip", l.Addr.String(), "err", err)
	}
	if m.opts.Installer != nil {
		if err := m.opts.Installer.Add(l.Addr, l.Subnet.Bits(), lifetime(l, m.opts.Now())); err != nil {
			m.log.Error("refresh vip lifetime", "vip", l.Addr.String(), "err", err)
		}
	}
}

// Lost implements source.Events: the source no longer holds addr for h
// (expired unrenewed, NAK). The VIP is withdrawn; the holder's next request
// acquires a new one.
func (m *Manager) Lost(h lease.Holder, addr netip.Addr, reason error) {
	// The source no longer has the address: nothing to give back.
	if _, ok := m.withdraw(h, addr, ReleaseLost); ok {
		m.log.Warn("vip withdrawn", "holder", h.Key(), "vip", addr.String(), "reason", reason)
	}
}
