package alloc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source"
)

// The kernel interceptor's stock (issue 11): leases acquired ahead under
// stock holders (lease.KindStock), installed and persisted like any other,
// whose addresses the kernel hands to a holder at its first socket call
// without asking the daemon. The daemon then moves the lease to that holder
// (Assigned): the address never changes hands on the wire, and at no moment
// is it free in the source while a holder uses it.

// KernelClaims is the kernel interceptor as the manager sees it when the
// kernel hands out stock addresses itself: a lease the daemon acquires for
// a holder must not replace the address the kernel gave that holder first.
type KernelClaims interface {
	// Claim makes addr h's address in the kernel unless the kernel has
	// given h one already, which it returns instead. A holder the kernel
	// does not serve (not an audit session) gets addr back.
	Claim(h lease.Holder, addr netip.Addr) (netip.Addr, error)
	// TakeStock takes one address out of the kernel's stock, so that no
	// first call can take it any more, if the stock has one.
	TakeStock() (netip.Addr, bool)
	// Entry is the address the kernel's entry for h names, if it has one.
	Entry(h lease.Holder) (netip.Addr, bool)
}

// SetKernel makes acquisitions respect the kernel's first-use assignments.
// Call before Restore.
func (m *Manager) SetKernel(k KernelClaims) { m.kernel = k }

// StockHolder is stock place i.
func StockHolder(i uint32) lease.Holder {
	return lease.Holder{Session: lease.Session{Kind: lease.KindStock, ID: i}}
}

// Stock returns the stock leases, lowest place first.
func (m *Manager) Stock() []lease.Lease {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []lease.Lease
	for h, e := range m.holders {
		if h.Session.Stock() && e.done() && e.err == nil {
			out = append(out, e.lease)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Holder.Session.ID < out[j].Holder.Session.ID })
	return out
}

// FillStock acquires leases for the stock places below n that have none,
// a few at a time, calls got (from any goroutine, one call at a time) with
// each as soon as it is durable and installed, so that the caller hands it
// to the kernel at once, and returns them all. It stops at the first
// failure (the pool is empty, the server does not answer) and reports it
// with what it got so far.
func (m *Manager) FillStock(ctx context.Context, n int, got func(lease.Lease)) ([]lease.Lease, error) {
	if _, ok := m.opts.Source.(source.Transferer); !ok {
		return nil, fmt.Errorf("the %s source cannot hand a lease from one holder to another", m.opts.Source.Name())
	}
	var want []lease.Holder
	m.mu.RLock()
	for i := range uint32(n) {
		if _, has := m.holders[StockHolder(i)]; !has {
			want = append(want, StockHolder(i))
		}
	}
	m.mu.RUnlock()
	var (
		mu    sync.Mutex
		out   []lease.Lease
		first error
		wg    sync.WaitGroup
	)
	work := make(chan lease.Holder)
	for range min(8, len(want)) {
		wg.Go(func() {
			for h := range work {
				l, err := m.leaseFor(ctx, h, 0)
				mu.Lock()
				if err != nil {
					first = firstErr(first, err)
				} else {
					out = append(out, l)
					if got != nil {
						got(l)
					}
				}
				mu.Unlock()
			}
		})
	}
	for _, h := range want {
		mu.Lock()
		stop := first != nil
		mu.Unlock()
		if stop || ctx.Err() != nil {
			break
		}
		work <- h
	}
	close(work)
	wg.Wait()
	return out, first
}

func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// ReleaseStock gives back the stock lease of addr (the daemon shrinks the
// stock, or the address is no longer wanted), if a stock place holds it.
// The caller has taken the address out of the kernel's stock first.
func (m *Manager) ReleaseStock(addr netip.Addr) bool {
	h, ok := m.stockHolderOf(addr)
	if !ok {
		return false
	}
	_, ok = m.release(h, ReleaseStock)
	return ok
}

func (m *Manager) stockHolderOf(addr netip.Addr) (lease.Holder, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	for h, e := range m.holders {
		if h.Session.Stock() && e.done() && e.err == nil && !m.moving[h] && e.lease.Addr == addr {
			return h, true
		}
	}
	return lease.Holder{}, false
}

// ErrNotStock is returned by Assigned when no stock lease has the address
// the kernel handed out (a stale stock entry): the caller takes the
// kernel's entry back.
var ErrNotStock = errors.New("no stock lease has the address")

// ErrStale is returned by Assigned when the kernel's entry for the holder
// does not name the address reported: the report was overtaken.
var ErrStale = errors.New("the kernel's entry no longer names the address")

// Assigned records that the kernel gave h the stock address addr at its
// first socket call: the stock lease becomes h's, durably, before it is
// reported anywhere. It is idempotent (the event and the map both tell),
// and fails if h holds another address (the caller then takes the kernel's
// entry back: see Manager.acquire for why that cannot normally happen).
func (m *Manager) Assigned(h lease.Holder, addr netip.Addr, uid uint32) (lease.Lease, error) {
	for {
		m.mu.Lock()
		e := m.holders[h]
		if e == nil {
			e = &entry{ready: make(chan struct{}), created: m.opts.Now()}
			m.holders[h] = e
			m.mu.Unlock()
			var l lease.Lease
			var err error
			if m.kernel != nil {
				// The report may be stale (read after a restart that
				// released the holder and restocked the address): only
				// the kernel's entry, which nothing else can write for h
				// while e is pending, proves the assignment.
				if cur, ok := m.kernel.Entry(h); !ok || cur != addr {
					err = fmt.Errorf("assign %s to %s: %w", addr, h, ErrStale)
				}
			}
			if err == nil {
				l, err = m.transferInto(h, addr, uid)
			}
			m.finish(e, h, l, err, nil)
			return l, err
		}
		ready := e.ready
		m.mu.Unlock()
		if ready != nil {
			<-ready
		}
		if e.err != nil {
			continue // that acquisition failed and is gone: try again
		}
		if e.lease.Addr != addr {
			return e.lease, fmt.Errorf("kernel gave %s to %s, which holds %s", addr, h, e.lease.Addr)
		}
		return e.lease, nil
	}
}

// transferInto moves the stock lease of addr to h (whose entry the caller
// has made and not yet finished): the source first, then the store (the new
// record before the stock one is deleted; after a crash between the two,
// Restore keeps the holder's and drops the stock's).
func (m *Manager) transferInto(h lease.Holder, addr netip.Addr, uid uint32) (lease.Lease, error) {
	sh, ok := m.stockHolderOf(addr)
	if !ok {
		return lease.Lease{}, fmt.Errorf("assign %s to %s: %w", addr, h, ErrNotStock)
	}
	tr, ok := m.opts.Source.(source.Transferer)
	if !ok {
		return lease.Lease{}, fmt.Errorf("the %s source cannot transfer leases", m.opts.Source.Name())
	}
	m.mu.Lock()
	se := m.holders[sh]
	if se == nil || !se.done() || se.err != nil || m.moving[sh] || se.lease.Addr != addr {
		m.mu.Unlock()
		return lease.Lease{}, fmt.Errorf("assign %s to %s: %w", addr, h, ErrNotStock)
	}
	// Marked under the lock: no other assignment or release takes the
	// same lease, and the place is not refilled (an Acquire for the stock
	// holder while the source still has it could hand out the same
	// address, and its record must come after the stock one's delete).
	m.moving[sh] = true
	m.mu.Unlock()
	stock := se.lease
	stock.UID = uid // the record's user, where the source shows it (etcd)
	l, err := tr.Transfer(stock, h)
	if err != nil {
		m.mu.Lock()
		delete(m.moving, sh)
		m.mu.Unlock()
		return lease.Lease{}, fmt.Errorf("assign %s to %s: %w", addr, h, err)
	}
	l.UID = uid
	l.Granted = m.opts.Now()
	if err := m.opts.Store.Put(l); err != nil {
		// The kernel has handed the address out: it stays h's in the
		// source and the maps; only its record is missing, which the next
		// start's cross-check recovers from the kernel's evidence.
		m.log.Error("persist an assigned stock lease", "holder", h.Key(), "vip", addr.String(), "err", err)
	}
	m.opts.Store.DeleteAsync(sh)
	m.mu.Lock()
	m.drop(sh)
	m.mu.Unlock()
	m.log.Info("vip assigned by the kernel", "holder", h.Key(), "vip", addr.String(), "uid", uid, "stock", sh.Key())
	return l, nil
}

// finish completes entry e of h with l or err: observers see a grant, and
// then granted runs (nil: nothing), before anyone waiting on e learns of it.
func (m *Manager) finish(e *entry, h lease.Holder, l lease.Lease, err error, granted func()) {
	m.mu.Lock()
	if err != nil {
		m.drop(h)
		e.err = err
	} else {
		e.lease = l
		delete(m.outcomes, h)
	}
	m.mu.Unlock()
	if err == nil {
		for _, o := range m.observers {
			o.Granted(l)
		}
		if granted != nil {
			granted()
		}
	}
	m.mu.Lock()
	close(e.ready)
	e.ready = nil
	m.mu.Unlock()
}

// SessionUID is the user of sess as the last scan saw it, or
// 0xFFFFFFFF when it saw none (a session newer than the scan).
func (m *Manager) SessionUID(sess lease.Session) uint32 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if info, ok := m.snap.Sessions[sess]; ok {
		return info.UID
	}
	return 0xFFFFFFFF
}

// IsAdmin reports whether uid is an administrator under the current
// settings.
func (m *Manager) IsAdmin(uid uint32) bool {
	return m.isAdmin(uid, m.settings.Load().Admins)
}
