package alloc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/ipvirt/ipvirt/internal/census"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source"
)

// Census lists the sockets bound to the addresses the source hands out
// (package census, through the daemon). It is the manager's evidence that
// does not come from the store: a socket bound to an address is a holder
// of it, whatever the lease file says (issue 10).
type Census interface {
	// Bound lists the sockets bound now to the source's addresses and to
	// extra.
	Bound(extra []netip.Addr) ([]census.Socket, error)
	// Describe says which processes hold socks, for a log line or an
	// error (it reads /proc, so it is called only when something is
	// found).
	Describe(socks []census.Socket) string
}

// maxSetAside bounds how many addresses one acquisition may set aside
// before it gives up: a pool whose every address has sockets on it is
// exhausted in effect.
const maxSetAside = 16

// guard is the pre-grant check: no new grant hands out an address a socket
// is bound to, even if the store and the source think it free.
//
// A census costs a few hundred microseconds (the kernel walks its socket
// hash tables), so the guard does not take one per grant, which would cost
// the durable allocation path a large part of its throughput. It relies
// on where sockets come from instead: a socket's local address is fixed
// when it binds or connects, and a process can bind only a local address.
// A VIP is local while its lease holds it (the manager installs it at the
// grant and removes it at the release), so every socket that can ever be
// bound to a free address was bound before its release, and a census that
// started after the release sees it. Hence:
//
//   - an address never released by this daemon is covered by the census
//     taken at start-up (and by every later one);
//   - an address released since the last census started needs a new one;
//     a grant waits for it, and one census serves every grant waiting,
//     like the store's group commit. The pool hands out the address
//     released longest ago first, so this wait is rare: only a small or
//     nearly exhausted pool reuses an address within one scan interval;
//   - a census runs on every scan as well, for what the rule above cannot
//     see (a loopback adapter, where every 127/8 address is local; a
//     process binding a non-local address with IP_FREEBIND), and to give
//     back the addresses set aside once their sockets are gone.
//
// The per-grant cost is therefore two map lookups under a mutex.
//
// A source whose addresses the rule cannot vouch for (DHCP: an address may
// have been anyone's on the network, and on a loopback adapter its
// addresses are local without being installed) sets everyGrant: each grant
// then waits for a census started after it asked, over its own address.
// Such grants are few and slow anyway (a DHCP exchange and ARP probe).
type guard struct {
	c          Census
	everyGrant bool

	mu      sync.Mutex
	started uint64 // census rounds started
	last    *round // the last round that succeeded; nil before the first
	cur     *round // the round running; nil if none runs
	next    *round // the round wanted after cur; nil if none is wanted
	// freed maps an address released since the last round started to the
	// number of rounds started at its release: it needs a later one.
	freed map[netip.Addr]uint64
	// floor is the first round that looked at the current scope (a reload
	// that moves the pool brings addresses no earlier round looked at).
	floor uint64
	// aside holds the static addresses set aside, as the source gave them:
	// the source counts them as taken, and they go back to it once a
	// census shows them free.
	aside map[netip.Addr]lease.Lease
}

// round is one census: every waiting grant it serves reads its answer.
type round struct {
	n     uint64
	done  chan struct{} // closed when the census is in
	extra []netip.Addr  // addresses it must look at beyond the scope
	socks []census.Socket
	bound map[netip.Addr][]census.Socket
	err   error
}

func newGuard(c Census, everyGrant bool) *guard {
	return &guard{c: c, everyGrant: everyGrant, freed: map[netip.Addr]uint64{}, aside: map[netip.Addr]lease.Lease{}}
}

// released notes that addr left its holder: only a census started from
// now on vouches for it.
func (g *guard) released(addr netip.Addr) {
	g.mu.Lock()
	g.freed[addr] = g.started
	g.mu.Unlock()
}

// check returns the sockets bound to addr, by a census that covers it (see
// guard), waiting for one if needed.
func (g *guard) check(ctx context.Context, addr netip.Addr) ([]census.Socket, error) {
	g.mu.Lock()
	if g.everyGrant {
		g.mu.Unlock()
		r, err := g.await(ctx, 0, addr)
		if err != nil {
			return nil, err
		}
		return r.bound[addr], nil
	}
	need := max(g.floor, 1)
	if f, ok := g.freed[addr]; ok {
		need = max(need, f+1)
	}
	if g.last != nil && g.last.n >= need {
		socks := g.last.bound[addr]
		g.mu.Unlock()
		return socks, nil
	}
	g.mu.Unlock()
	r, err := g.await(ctx, need, netip.Addr{})
	if err != nil {
		return nil, err
	}
	return r.bound[addr], nil
}

// census takes a census now (or joins the one that starts next) and
// returns what it found.
func (g *guard) census(ctx context.Context) ([]census.Socket, error) {
	r, err := g.await(ctx, 0, netip.Addr{})
	if err != nil {
		return nil, err
	}
	return r.socks, nil
}

// await returns a round numbered need or later that succeeded; need 0
// means one not started yet, which looks at extra too when it is valid.
// Rounds run one at a time, and every caller that arrives while one runs
// shares the next: one census serves every grant waiting.
func (g *guard) await(ctx context.Context, need uint64, extra netip.Addr) (*round, error) {
	g.mu.Lock()
	fresh := need == 0
	if fresh {
		need = g.started + 1
	}
	if g.last != nil && g.last.n >= need {
		r := g.last
		g.mu.Unlock()
		return r, nil
	}
	var r *round
	if !fresh && g.cur != nil && g.cur.n >= need {
		r = g.cur
	} else {
		if g.next == nil {
			g.next = &round{done: make(chan struct{})}
		}
		r = g.next
		if extra.IsValid() {
			r.extra = append(r.extra, extra)
		}
		if g.cur == nil {
			g.startLocked()
		}
	}
	g.mu.Unlock()
	select {
	case <-r.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for a socket census: %w", ctx.Err())
	}
	if r.err != nil {
		return nil, r.err
	}
	return r, nil
}

// startLocked starts the wanted round; g.mu is held.
func (g *guard) startLocked() {
	g.started++
	r := g.next
	r.n, g.cur, g.next = g.started, r, nil
	go g.run(r)
}

func (g *guard) run(r *round) {
	socks, err := g.c.Bound(r.extra)
	if err != nil {
		r.err = fmt.Errorf("socket census: %w", err)
	} else {
		r.socks, r.bound = socks, make(map[netip.Addr][]census.Socket, len(socks))
		for _, s := range socks {
			r.bound[s.Local.Addr()] = append(r.bound[s.Local.Addr()], s)
		}
	}
	g.mu.Lock()
	if err == nil {
		g.last = r
		for a, f := range g.freed {
			if f < r.n {
				delete(g.freed, a)
			}
		}
	}
	close(r.done)
	g.cur = nil
	if g.next != nil {
		g.startLocked()
	}
	g.mu.Unlock()
}

// vet returns an address from the source that no socket is bound to: each
// one the census shows bound is set aside (static: kept out of the pool
// until a census shows it free; a source that can decline one, DHCP, gives
// it back as in use) and another is taken. It is the last step before a
// grant, so that not even a store that lost a lease can make one address
// two holders'.
func (m *Manager) vet(ctx context.Context, h lease.Holder, l lease.Lease) (lease.Lease, error) {
	g := m.guard
	for n := 0; ; n++ {
		socks, err := g.check(ctx, l.Addr)
		if err != nil {
			m.opts.Source.Release(l)
			return lease.Lease{}, fmt.Errorf("check %s for sockets bound to it: %w", l.Addr, err)
		}
		if len(socks) == 0 {
			return l, nil
		}
		m.setAside(l, socks)
		if n == maxSetAside {
			return lease.Lease{}, fmt.Errorf("%d addresses in a row have sockets bound to them: %w", n+1, source.ErrExhausted)
		}
		if l, err = m.opts.Source.Acquire(ctx, h); err != nil {
			return lease.Lease{}, err
		}
	}
}

func (m *Manager) setAside(l lease.Lease, socks []census.Socket) {
	who := m.guard.c.Describe(socks)
	if d, ok := m.opts.Source.(source.Decliner); ok {
		d.Decline(l, "address in use on this host: "+who)
		m.log.Warn("address in use though no lease holds it: declined", "vip", l.Addr.String(), "sockets", who)
		return
	}
	g := m.guard
	g.mu.Lock()
	g.aside[l.Addr] = l
	g.mu.Unlock()
	m.log.Warn("address in use though no lease holds it: set aside until its sockets are closed",
		"vip", l.Addr.String(), "sockets", who)
}

// sweep takes a census (each scan) and gives back to the source the
// addresses set aside that no socket is bound to any more.
func (m *Manager) sweep(ctx context.Context) {
	g := m.guard
	g.mu.Lock()
	idle := g.everyGrant && len(g.aside) == 0
	g.mu.Unlock()
	if idle {
		return // no grant relies on the last census, and nothing is set aside
	}
	socks, err := g.census(ctx)
	if err != nil {
		m.log.Error("socket census failed", "err", err)
		return
	}
	bound := map[netip.Addr]bool{}
	for _, s := range socks {
		bound[s.Local.Addr()] = true
	}
	g.mu.Lock()
	var back []lease.Lease
	for a, l := range g.aside {
		if !bound[a] {
			back = append(back, l)
			delete(g.aside, a)
		}
	}
	g.mu.Unlock()
	for _, l := range back {
		m.opts.Source.Release(l)
		m.log.Info("address set aside is free again: back in the pool", "vip", l.Addr.String())
	}
}

// Census takes a socket census now and returns what it found: the
// start-up cross-check's evidence, and the round every later grant relies
// on. Without a census it returns nothing.
func (m *Manager) Census(ctx context.Context) ([]census.Socket, error) {
	if m.guard == nil {
		return nil, errors.New("no socket census configured")
	}
	return m.guard.census(ctx)
}

// CensusScopeChanged says that the census now looks at other addresses (a
// reload moved the static pool): grants wait for a census of the new scope.
func (m *Manager) CensusScopeChanged() {
	if m.guard == nil {
		return
	}
	m.guard.mu.Lock()
	m.guard.floor = m.guard.started + 1
	m.guard.mu.Unlock()
}

// SetAside reports the addresses set aside because sockets are bound to
// them.
func (m *Manager) SetAside() []netip.Addr {
	if m.guard == nil {
		return nil
	}
	m.guard.mu.Lock()
	defer m.guard.mu.Unlock()
	out := make([]netip.Addr, 0, len(m.guard.aside))
	for a := range m.guard.aside {
		out = append(out, a)
	}
	return out
}
