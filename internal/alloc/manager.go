// Package alloc is the allocation manager: it answers "which address may
// this process use?" by applying the policy, finding or acquiring the
// holder's VIP, persisting it before anyone learns of it, and releasing it
// once the holder has been gone for the grace period.
//
// The invariant everything here protects: one VIP is never held by two live
// holders, not even across a crash. Three rules give it:
//   - a lease is durable in the store before its VIP is handed to anyone;
//   - an address returns to the source only after its lease is forgotten
//     (the store delete is queued first, and the store commits in order);
//   - at start-up every persisted lease is adopted back into the source
//     before a single request is served.
package alloc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/internal/source"
	"github.com/ipvirt/ipvirt/internal/store"
)

// How long callers may reuse an answer. A VIP is re-checked every few
// minutes so that an administrator's release or a reload reaches running
// programs; a machine-IP answer every minute; an exhausted answer soon, since
// an address may free up.
const (
	ttlVIP       = 5 * time.Minute
	ttlMIP       = time.Minute
	ttlExhausted = 5 * time.Second
)

// DefaultAcquireTimeout bounds one acquisition from the source when Options
// set none. A healthy static pool allocates in milliseconds, so this only
// ever catches a source or store that hangs; it stays well inside the
// socket server's bound on one request, so that a waiting QUERY gets the
// on_exhausted answer instead of a closed connection.
const DefaultAcquireTimeout = 10 * time.Second

// Exhausted is what a caller gets when no VIP is available.
type Exhausted string

const (
	// ExhaustedMachineIP falls back to the machine's address (Windows' default).
	ExhaustedMachineIP Exhausted = "machine-ip"
	// ExhaustedDeny refuses the call (Windows' "do not use the server IP
	// address when a virtual IP is not available" policy).
	ExhaustedDeny Exhausted = "deny"
)

// Admins lists the users (names or uids) and groups whose sessions are
// never virtualized.
type Admins struct {
	Users  []string `yaml:"users"`
	Groups []string `yaml:"groups"`
}

// Settings is the reloadable part of the configuration.
type Settings struct {
	Policy      policy.Settings
	Admins      Admins
	OnExhausted Exhausted
	Grace       time.Duration
	// Prealloc acquires a VIP for a holder as soon as a scan sees it (a new
	// session; in per-program mode a listed program starting), so that its
	// first connect does not wait for a DHCP exchange and kernel-level
	// interception has the address before the first packet.
	Prealloc bool
}

// Installer puts VIPs on the adapter (package adapter); nil when the VIPs
// need no installing.
type Installer interface {
	Add(vip netip.Addr, bits int, lifetime time.Duration) error
	Remove(vip netip.Addr, bits int) error
}

// Scanner finds the live login sessions (package identity).
type Scanner interface {
	Scan(withPrograms bool) (identity.Snapshot, error)
}

// UserDB answers who users are (package identity).
type UserDB interface {
	IsAdmin(uid uint32, users, groups []string) bool
	Name(uid uint32) string
}

func (m *Manager) isAdmin(uid uint32, a Admins) bool {
	return m.opts.Users.IsAdmin(uid, a.Users, a.Groups)
}

// Observer is told of every grant and release, in order per holder. The
// kernel interceptor keeps its maps in step through it. Calls happen outside
// the manager's locks and must not call back into the manager.
type Observer interface {
	Granted(l lease.Lease)
	Released(l lease.Lease)
}

// Options are the manager's collaborators.
type Options struct {
	Source    source.Source
	Store     *store.Store
	Installer Installer
	Scanner   Scanner
	Users     UserDB
	MIP       netip.Addr
	Log       *slog.Logger
	// Now is the clock; tests drive grace periods with their own.
	Now func() time.Time
	// AcquireTimeout bounds one acquisition from the source; zero means
	// DefaultAcquireTimeout.
	AcquireTimeout time.Duration
	// Census, when set, lists the sockets bound to the source's
	// addresses: no new grant hands out one a socket is bound to (see
	// guard), and every scan takes one.
	Census Census
	// CensusEveryGrant makes each new grant wait for a census of its own
	// address taken after it asked, rather than trust the last one for an
	// address not released since (see guard).
	CensusEveryGrant bool
}

// Manager owns every holder and its lease.
type Manager struct {
	opts     Options
	log      *slog.Logger
	settings atomic.Pointer[Settings]

	mu      sync.RWMutex
	holders map[lease.Holder]*entry
	// gone holds when scans stopped seeing each holder that is gone (in
	// its grace period); moving holds the stock places whose lease is
	// being transferred to the holder the kernel gave its address to: the
	// place is not refilled, nor the lease released or transferred again,
	// meanwhile. Few holders are in either, so neither is a field of every
	// entry.
	gone   map[lease.Holder]time.Time
	moving map[lease.Holder]bool
	// outcomes remembers, per holder, the last answer that was not a VIP
	// for want of one (exhausted, source failure), for reports.
	outcomes map[lease.Holder]outcome
	snap     identity.Snapshot
	seen     map[lease.Session]time.Time // first time a scan saw each session

	observers []Observer
	counters  Counters
	logged    map[lease.Holder]time.Time // rate limit of not-virtualized events
	prealloc  sync.Map                   // holders being pre-allocated
	guard     *guard                     // nil without a census
	kernel    KernelClaims               // nil unless the kernel hands out stock
}

type entry struct {
	// ready is closed when acquisition finishes, and set to nil at the
	// same moment (under m.mu, which every read of it holds): a settled
	// entry keeps no channel, which would be a third of its memory.
	ready   chan struct{}
	lease   lease.Lease // valid once done, if err == nil
	err     error
	created time.Time
}

// done reports whether acquisition finished. The caller holds m.mu.
func (e *entry) done() bool { return e.ready == nil }

// drop forgets h's entry, with its grace period and transfer mark. The
// caller holds m.mu.
func (m *Manager) drop(h lease.Holder) {
	delete(m.holders, h)
	delete(m.gone, h)
	delete(m.moving, h)
}

type outcome struct {
	kind   wire.Kind
	reason string
	at     time.Time
}

// New returns a manager. Call Restore before serving requests.
func New(opts Options, s Settings) *Manager {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.AcquireTimeout == 0 {
		opts.AcquireTimeout = DefaultAcquireTimeout
	}
	m := &Manager{
		opts:     opts,
		log:      opts.Log,
		holders:  map[lease.Holder]*entry{},
		gone:     map[lease.Holder]time.Time{},
		moving:   map[lease.Holder]bool{},
		outcomes: map[lease.Holder]outcome{},
		seen:     map[lease.Session]time.Time{},
		logged:   map[lease.Holder]time.Time{},
	}
	if opts.Census != nil {
		m.guard = newGuard(opts.Census, opts.CensusEveryGrant)
	}
	m.settings.Store(&s)
	return m
}

// AddObserver registers o. Call before Restore so that o sees the adopted
// leases as grants.
func (m *Manager) AddObserver(o Observer) { m.observers = append(m.observers, o) }

// Settings returns the current settings.
func (m *Manager) Settings() Settings { return *m.settings.Load() }

// SetSettings swaps in new settings. Existing leases are never taken away by
// a reload: a holder that the new rules would not virtualize keeps its VIP
// until it ends. The number of such leases is returned so the caller can
// say so.
func (m *Manager) SetSettings(s Settings) (stranded []lease.Lease) {
	m.settings.Store(&s)
	m.mu.RLock()
	defer m.mu.RUnlock()
	for h, e := range m.holders {
		if !e.done() || e.err != nil {
			continue
		}
		perProgram := s.Policy.Mode == policy.PerProgram
		if !s.Policy.Enabled || h.PerProgram() != perProgram || (perProgram && !s.Policy.Programs[h.Program]) {
			stranded = append(stranded, e.lease)
		}
	}
	return stranded
}

// Answer is the manager's reply to one caller.
type Answer struct {
	Kind   wire.Kind
	Lease  lease.Lease // for KindVIP
	Rule   policy.Rule // the rule that decided, or "exhausted"
	Reason string
	TTL    time.Duration
	Holder lease.Holder // who holds, or would hold, the VIP
}

// RuleExhausted marks answers given because no VIP was available.
const RuleExhausted policy.Rule = "exhausted"

// Query decides for caller c, acquiring a VIP if the rules grant one.
func (m *Manager) Query(ctx context.Context, c identity.Caller) Answer {
	s := m.settings.Load()
	admin, userName := false, ""
	if s.Policy.Enabled && c.Session.Valid() {
		if admin = m.isAdmin(c.SessionUID, s.Admins); admin {
			userName = m.opts.Users.Name(c.SessionUID)
		}
	}
	v := policy.Decide(s.Policy, c, admin, userName)
	if v.Rule != policy.RuleVirtualize {
		m.counters.count(wire.KindMIP, v.Rule)
		return Answer{Kind: wire.KindMIP, Rule: v.Rule, Reason: v.Reason, TTL: ttlMIP}
	}
	l, err := m.leaseFor(ctx, v.Holder, c.SessionUID)
	if err == nil {
		m.counters.count(wire.KindVIP, policy.RuleVirtualize)
		return Answer{Kind: wire.KindVIP, Lease: l, Rule: policy.RuleVirtualize, TTL: vipTTL(l, m.opts.Now()), Holder: v.Holder}
	}
	return m.notVirtualized(s, v.Holder, c, err)
}

// QueryNow is Query for callers that must not wait: it answers when the
// answer is at hand (not virtualized, or a holder whose lease is ready) and
// reports false when it would need an allocation, which the caller then
// asks for with Query. The socket server answers most QUERYs this way on
// its accept thread, without a goroutine hand-off.
func (m *Manager) QueryNow(c identity.Caller) (Answer, bool) {
	s := m.settings.Load()
	if c.Exe == "" && s.Policy.Mode == policy.PerProgram {
		// Resolved for per-session mode and reloaded since: Query, with
		// the executable read, decides.
		return Answer{}, false
	}
	admin, userName := false, ""
	if s.Policy.Enabled && c.Session.Valid() {
		if admin = m.isAdmin(c.SessionUID, s.Admins); admin {
			userName = m.opts.Users.Name(c.SessionUID)
		}
	}
	v := policy.Decide(s.Policy, c, admin, userName)
	if v.Rule != policy.RuleVirtualize {
		m.counters.count(wire.KindMIP, v.Rule)
		return Answer{Kind: wire.KindMIP, Rule: v.Rule, Reason: v.Reason, TTL: ttlMIP}, true
	}
	m.mu.RLock()
	e := m.holders[v.Holder]
	ok := e != nil && e.done() && e.err == nil
	var l lease.Lease
	if ok {
		l = e.lease
	}
	m.mu.RUnlock()
	if !ok {
		return Answer{}, false
	}
	m.counters.count(wire.KindVIP, policy.RuleVirtualize)
	return Answer{Kind: wire.KindVIP, Lease: l, Rule: policy.RuleVirtualize, TTL: vipTTL(l, m.opts.Now()), Holder: v.Holder}, true
}

// NeedsProgram reports whether decisions depend on the caller's executable
// (per-program mode), so that callers identify it only then.
func (m *Manager) NeedsProgram() bool {
	return m.settings.Load().Policy.Mode == policy.PerProgram
}

func vipTTL(l lease.Lease, now time.Time) time.Duration {
	ttl := ttlVIP
	if !l.Expiry.IsZero() {
		// Re-ask well before expiry: by then the lease is renewed or gone.
		if half := l.Expiry.Sub(now) / 2; half < ttl {
			ttl = max(half, time.Second)
		}
	}
	return ttl
}

// notVirtualized answers a caller the rules would virtualize but who gets no
// VIP, and logs it the way Windows logs event 110.
func (m *Manager) notVirtualized(s *Settings, h lease.Holder, c identity.Caller, err error) Answer {
	kind, what := wire.KindMIP, "machine IP used instead (on_exhausted: machine-ip)"
	if s.OnExhausted == ExhaustedDeny {
		kind, what = wire.KindDenied, "call refused (on_exhausted: deny)"
	}
	reason := fmt.Sprintf("no virtual IP available: %v; %s", err, what)
	m.counters.count(kind, RuleExhausted)
	now := m.opts.Now()
	m.mu.Lock()
	m.outcomes[h] = outcome{kind: kind, reason: reason, at: now}
	last, seen := m.logged[h]
	if !seen || now.Sub(last) > time.Minute {
		m.logged[h] = now
	}
	m.mu.Unlock()
	if !seen || now.Sub(last) > time.Minute {
		m.log.Warn("program not virtualized", "event", 110, "session", h.Session.String(),
			"user", m.opts.Users.Name(c.SessionUID), "program", c.Exe, "pid", c.PID,
			"result", kind.String(), "reason", err.Error())
	}
	return Answer{Kind: kind, Rule: RuleExhausted, Reason: reason, TTL: ttlExhausted, Holder: h}
}

// leaseFor returns h's lease, acquiring one if it has none. Concurrent
// callers for one holder share a single acquisition.
func (m *Manager) leaseFor(ctx context.Context, h lease.Holder, uid uint32) (lease.Lease, error) {
	m.mu.RLock()
	e := m.holders[h]
	var ready chan struct{}
	if e != nil {
		if e.done() && e.err == nil {
			l := e.lease
			m.mu.RUnlock()
			return l, nil
		}
		ready = e.ready
	}
	m.mu.RUnlock()
	if e == nil {
		m.mu.Lock()
		if e = m.holders[h]; e == nil {
			e = &entry{ready: make(chan struct{}), created: m.opts.Now()}
			m.holders[h] = e
			go m.acquire(e, h, uid)
		}
		ready = e.ready
		m.mu.Unlock()
	}
	if ready != nil {
		select {
		case <-ready:
		case <-ctx.Done():
			return lease.Lease{}, fmt.Errorf("waiting for a lease: %w", ctx.Err())
		}
	}
	if e.err != nil {
		return lease.Lease{}, e.err
	}
	return e.lease, nil
}

// acquire gets an address from the source and makes it durable and usable
// before anyone waiting on e learns of it.
func (m *Manager) acquire(e *entry, h lease.Holder, uid uint32) {
	ctx, cancel := context.WithTimeout(source.WithUser(context.Background(), uid), m.opts.AcquireTimeout)
	defer cancel()
	l, err := m.opts.Source.Acquire(ctx, h)
	if err == nil && m.guard != nil {
		l, err = m.vet(ctx, h, l)
	}
	if err == nil {
		l.UID = uid
		if l.Granted.IsZero() {
			l.Granted = m.opts.Now()
		}
		err = m.commit(l)
	}
	if errors.Is(err, source.ErrExhausted) && m.kernel != nil && !h.Session.Stock() {
		// The pool is empty but for the kernel's stock: a holder that
		// asks is served from it rather than refused.
		if a, ok := m.kernel.TakeStock(); ok {
			if sl, serr := m.transferInto(h, a, uid); serr == nil {
				l, err = sl, nil
			}
		}
	}
	if err == nil && m.kernel != nil && !h.Session.Stock() {
		l, err = m.keepKernels(h, l, uid)
	}
	m.finish(e, h, l, err, func() {
		m.log.Info("vip granted", "holder", h.Key(), "vip", l.Addr.String(), "uid", uid)
	})
}

// keepKernels makes l, just committed, h's address in the kernel, unless
// the kernel gave h a stock address while l was being acquired (its first
// call came first): then h keeps the kernel's, whose sockets may be bound
// already, and l goes back.
func (m *Manager) keepKernels(h lease.Holder, l lease.Lease, uid uint32) (lease.Lease, error) {
	cur, err := m.kernel.Claim(h, l.Addr)
	if err != nil {
		// The observer's map write tries again; the lease stands.
		m.log.Error("kernel interceptor: claim", "holder", h.Key(), "vip", l.Addr.String(), "err", err)
		return l, nil
	}
	if cur == l.Addr {
		return l, nil
	}
	if _, ok := m.stockHolderOf(cur); !ok {
		// A stale entry, not an address the kernel handed out: the
		// observer's map write replaces it.
		m.log.Warn("kernel interceptor: stale entry replaced", "holder", h.Key(), "stale", cur.String(), "vip", l.Addr.String())
		return l, nil
	}
	// l goes back before the kernel's moves to h: every source keeps one
	// lease per holder and refuses to transfer a second to it (found by
	// TestStockStateMachine: the move always failed, and the holder was
	// answered as exhausted until its event was read). Its record is
	// forgotten first, as release does, so that the store commits its
	// delete before any record of another holder's that l goes to; a
	// crash before the transfer's record leaves the stock's and the
	// kernel's entry, which start-up's reconcile assigns to h.
	m.opts.Store.DeleteAsync(h)
	if m.opts.Installer != nil {
		if err := m.opts.Installer.Remove(l.Addr, l.Subnet.Bits()); err != nil {
			m.log.Error("vip removal failed", "vip", l.Addr.String(), "err", err)
		}
	}
	m.opts.Source.Release(l)
	kl, terr := m.transferInto(h, cur, uid)
	if terr != nil {
		return lease.Lease{}, terr
	}
	return kl, nil
}

// commit persists and installs a newly acquired lease, undoing both if
// either fails: a VIP that is not durable, or not usable, is not handed out.
func (m *Manager) commit(l lease.Lease) error {
	if err := m.opts.Store.Put(l); err != nil {
		m.opts.Source.Release(l)
		return fmt.Errorf("persist lease %s for %s: %w", l.Addr, l.Holder, err)
	}
	if m.opts.Installer != nil {
		if err := m.opts.Installer.Add(l.Addr, l.Subnet.Bits(), lifetime(l, m.opts.Now())); err != nil {
			m.opts.Store.DeleteAsync(l.Holder)
			m.opts.Source.Release(l)
			return fmt.Errorf("install %s: %w", l.Addr, err)
		}
	}
	return nil
}

func lifetime(l lease.Lease, now time.Time) time.Duration {
	if l.Expiry.IsZero() {
		return 0
	}
	return max(l.Expiry.Sub(now), time.Second)
}

// release ends h's lease and gives its address back to the source.
func (m *Manager) release(h lease.Holder, why string) (lease.Lease, bool) {
	l, ok := m.withdraw(h, netip.Addr{}, why)
	if !ok {
		return l, false
	}
	m.opts.Source.Release(l)
	m.log.Info("vip released", "holder", h.Key(), "vip", l.Addr.String(), "why", why)
	return l, true
}

// withdraw forgets h's lease (only if it holds addr, when addr is valid):
// observers first, then the adapter, then the store. The caller returns the
// address to the source, if the source still has it, only after this: the
// store delete is queued first and the store commits in order, so the
// address can never be granted again while a record still names h.
func (m *Manager) withdraw(h lease.Holder, addr netip.Addr, why string) (lease.Lease, bool) {
	m.mu.Lock()
	e := m.holders[h]
	if e == nil || !e.done() || e.err != nil || (addr.IsValid() && e.lease.Addr != addr) {
		m.mu.Unlock()
		return lease.Lease{}, false
	}
	m.drop(h)
	delete(m.outcomes, h)
	delete(m.logged, h)
	m.mu.Unlock()
	l := e.lease
	if m.guard != nil {
		// Before the address can go back to the source: from now on only
		// a census taken after this moment vouches for it.
		m.guard.released(l.Addr)
	}
	for _, o := range m.observers {
		o.Released(l)
	}
	if m.opts.Installer != nil {
		if err := m.opts.Installer.Remove(l.Addr, l.Subnet.Bits()); err != nil {
			m.log.Error("vip removal failed", "vip", l.Addr.String(), "err", err)
		}
	}
	m.opts.Store.DeleteAsync(h)
	m.counters.released(why)
	return l, true
}

// ReleaseSession releases every lease of a session now (ipvirtctl release),
// without waiting for its processes to end.
func (m *Manager) ReleaseSession(s lease.Session) []lease.Lease {
	if s.Stock() {
		// Not a session: the address may sit in the kernel's stock, for
		// a first call to take (ReleaseStock takes it out first).
		return nil
	}
	m.mu.RLock()
	var hs []lease.Holder
	for h := range m.holders {
		if h.Session == s {
			hs = append(hs, h)
		}
	}
	m.mu.RUnlock()
	var out []lease.Lease
	for _, h := range hs {
		if l, ok := m.release(h, ReleaseAdmin); ok {
			out = append(out, l)
		}
	}
	return out
}

// Lease returns h's current lease, if it has one.
func (m *Manager) Lease(h lease.Holder) (lease.Lease, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	e := m.holders[h]
	if e == nil || !e.done() || e.err != nil {
		return lease.Lease{}, false
	}
	return e.lease, true
}

// Leases returns every granted lease.
func (m *Manager) Leases() []lease.Lease {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]lease.Lease, 0, len(m.holders))
	for _, e := range m.holders {
		if e.done() && e.err == nil {
			out = append(out, e.lease)
		}
	}
	return out
}

// DuplicateVIPs counts addresses held by more than one holder: a self-check
// that must always be zero, exported as ipvirt_duplicate_vips. Every status
// request and metrics scrape runs it, so it sorts a slice (24 bytes a
// lease) rather than fill a map of every address (some 80), and sorts it
// once the lock is released.
func (m *Manager) DuplicateVIPs() int {
	m.mu.RLock()
	addrs := make([]netip.Addr, 0, len(m.holders))
	for _, e := range m.holders {
		if e.done() && e.err == nil {
			addrs = append(addrs, e.lease.Addr)
		}
	}
	m.mu.RUnlock()
	slices.SortFunc(addrs, netip.Addr.Compare)
	dups := 0
	for i := 1; i < len(addrs); i++ {
		// The first repeat of each address counts it.
		if addrs[i] == addrs[i-1] && (i == 1 || addrs[i-1] != addrs[i-2]) {
			dups++
		}
	}
	return dups
}
