// Package static is the static-pool address source (the TSVIPool registry
// value of Windows RD IP Virtualization): VIPs from a configured range, held
// for as long as their holder lives.
package static

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/pool"
	"github.com/ipvirt/ipvirt/internal/source"
)

// Name is the config name of this source.
const Name = "static"

// Source hands out addresses of a static range.
type Source struct {
	mu     sync.Mutex
	held   held // the range's free list, and who holds what
	subnet netip.Prefix
	now    func() time.Time
}

var (
	_ source.Source       = (*Source)(nil)
	_ source.Reconfigurer = (*Source)(nil)
	_ source.Claimer      = (*Source)(nil)
	_ source.Transferer   = (*Source)(nil)
)

// New returns a source over the (already validated) pool.
func New(p Config) (*Source, error) {
	pl, err := pool.New(p.Start, p.End)
	if err != nil {
		return nil, fmt.Errorf("static: %w", err)
	}
	return &Source{held: newHeld(pl), subnet: p.Subnet(), now: time.Now}, nil
}

// Name implements source.Source.
func (s *Source) Name() string { return Name }

// Acquire implements source.Source. It never blocks.
func (s *Source) Acquire(_ context.Context, h lease.Holder) (lease.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.held.pool.Take()
	if !ok {
		return lease.Lease{}, fmt.Errorf("static: pool of %d addresses: all in use: %w", s.held.pool.Size(), source.ErrExhausted)
	}
	s.held.set(a, h)
	return lease.Lease{Holder: h, Addr: a, Subnet: s.subnet, Source: Name, Granted: s.now()}, nil
}

// Adopt implements source.Source. Two persisted leases claiming one address
// mean the store is corrupt; the second is refused so the manager can drop it
// rather than hand one VIP to two holders.
func (s *Source) Adopt(l lease.Lease) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if other, ok := s.held.get(l.Addr); ok {
		if other == l.Holder {
			return nil
		}
		return fmt.Errorf("static: adopt %s for %s: already held by %s", l.Addr, l.Holder, other)
	}
	s.held.pool.TakeAddr(l.Addr) // false for a stranded address: held all the same
	s.held.set(l.Addr, l.Holder)
	return nil
}

// Claim implements source.Claimer: a live holder found using a (the
// sockets of its processes are bound to it) although the store lost its
// lease. As with Adopt, an address outside the current range is held all
// the same.
func (s *Source) Claim(h lease.Holder, a netip.Addr) (lease.Lease, error) {
	if !a.Is4() {
		return lease.Lease{}, fmt.Errorf("static: claim %s for %s: not an IPv4 address", a, h)
	}
	l := lease.Lease{Holder: h, Addr: a, Subnet: s.subnetOf(), Source: Name, Granted: s.now()}
	if err := s.Adopt(l); err != nil {
		return lease.Lease{}, err
	}
	return l, nil
}

func (s *Source) subnetOf() netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.subnet
}

// Release implements source.Source.
func (s *Source) Release(l lease.Lease) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h, ok := s.held.get(l.Addr); !ok || h != l.Holder {
		return
	}
	s.held.free(l.Addr)
}

// Transfer implements source.Transferer: the address passes from l.Holder
// to to (a stock lease handed to the session the kernel gave it to). An
// address stranded by a reconfiguration passes too: it stays held, by its
// new holder, until released.
func (s *Source) Transfer(l lease.Lease, to lease.Holder) (lease.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h, ok := s.held.get(l.Addr); !ok || h != l.Holder {
		return lease.Lease{}, fmt.Errorf("static: transfer %s from %s to %s: %s does not hold it", l.Addr, l.Holder, to, l.Holder)
	}
	for a, h := range s.held.all() {
		if h == to {
			return lease.Lease{}, fmt.Errorf("static: transfer %s from %s to %s: %s already holds %s", l.Addr, l.Holder, to, to, a)
		}
	}
	s.held.set(l.Addr, to)
	l.Holder = to
	return l, nil
}

// Reconfigure implements source.Reconfigurer.
func (s *Source) Reconfigure(r source.Range) (stranded []netip.Addr, err error) {
	pl, err := pool.New(r.Start, r.End)
	if err != nil {
		return nil, fmt.Errorf("static: %w", err)
	}
	next := newHeld(pl)
	s.mu.Lock()
	defer s.mu.Unlock()
	for a, h := range s.held.all() {
		if !pl.TakeAddr(a) {
			stranded = append(stranded, a)
		}
		next.set(a, h)
	}
	s.held, s.subnet = next, r.Subnet
	return stranded, nil
}

// Stats implements source.Source.
func (s *Source) Stats() source.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Used counts the range only: stranded addresses (outside it after a
	// reload) are leases, not pool addresses, so free + used = size.
	return source.Stats{Size: s.held.pool.Size(), Used: s.held.pool.Size() - s.held.pool.Free(), Healthy: true, Health: "static pool"}
}

// Free returns the number of addresses of the current range not in use.
func (s *Source) Free() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held.pool.Free()
}

// Close implements source.Source; a static pool has no background work.
func (s *Source) Close() error { return nil }
