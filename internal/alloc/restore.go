package alloc

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source"
)

// BootIDPath holds a random id the kernel draws at every boot.
const BootIDPath = "/proc/sys/kernel/random/boot_id"

// RestoreReport says what Restore found.
type RestoreReport struct {
	Adopted   int // live holders that kept their VIP
	Released  int // holders that ended while the daemon was down
	Rebooted  bool
	Conflicts int // damaged records, or two leases claiming one address
	// Addrs holds every address a record named, whatever became of it
	// (adopted, released, dropped): the store accounts for these, and the
	// start-up cross-check looks only at the others.
	Addrs map[netip.Addr]bool
}

// Restore adopts every persisted lease back into the source, then releases
// the leases whose holders are gone: all of them after a reboot (session ids
// restart), otherwise those a scan does not find. It must run before the
// first request is served, so no new holder can be given an address a live
// holder has.
func (m *Manager) Restore() (RestoreReport, error) {
	rep := RestoreReport{Addrs: map[netip.Addr]bool{}}
	bootID := ReadBootID()
	if prev := m.opts.Store.Meta("boot_id"); prev != nil && string(prev) != bootID {
		rep.Rebooted = true
	}
	leases, bad := m.opts.Store.Leases()
	for _, err := range bad {
		rep.Conflicts++
		m.log.Error("damaged lease record skipped", "err", err)
	}
	// Stock leases last: a holder's record wins over a stock one for the
	// same address (see below), whatever order the store keeps.
	slices.SortStableFunc(leases, func(a, b lease.Lease) int {
		return cmpBool(a.Holder.Session.Stock(), b.Holder.Session.Stock())
	})
	needPrograms := false
	for _, l := range leases {
		needPrograms = needPrograms || l.Holder.PerProgram()
	}
	taken := m.opts.Now()
	snap, err := m.opts.Scanner.Scan(needPrograms)
	if err != nil {
		return rep, fmt.Errorf("restore: scan sessions: %w", err)
	}

	var dead []lease.Holder
	adopted := map[netip.Addr]bool{}
	for _, l := range leases {
		rep.Addrs[l.Addr] = true
		if l.Source != m.opts.Source.Name() {
			// The source was switched (static to dhcp or back): the new
			// source cannot vouch for the address. The holder asks again
			// and gets one of the new source's.
			rep.Released++
			m.log.Warn("lease of another source dropped", "holder", l.Holder.Key(), "vip", l.Addr.String(),
				"lease_source", l.Source, "source", m.opts.Source.Name())
			m.opts.Store.DeleteAsync(l.Holder)
			m.counters.released(ReleaseSourceChanged)
			continue
		}
		stockTaken := l.Holder.Session.Stock() && adopted[l.Addr]
		adopted[l.Addr] = true
		if stockTaken {
			// A crash between an assignment's two writes leaves the
			// holder's record and the stock's naming one address; the
			// holder's sorts first and was adopted.
			m.log.Info("stock lease already assigned", "stock", l.Holder.Key(), "vip", l.Addr.String())
			m.opts.Store.DeleteAsync(l.Holder)
			continue
		}
		if err := m.opts.Source.Adopt(l); err != nil && l.Holder.Session.Stock() {
			// A crash between an assignment's two writes leaves the
			// holder's record and the stock's naming one address; the
			// holder's sorts first and was adopted.
			m.log.Info("stock lease already assigned", "stock", l.Holder.Key(), "vip", l.Addr.String())
			m.opts.Store.DeleteAsync(l.Holder)
			continue
		} else if err != nil {
			// Two records for one address can only come from a damaged
			// store. Keeping the first and dropping this one may strand a
			// live holder's address, but never hands it to two.
			rep.Conflicts++
			m.log.Error("lease not adopted", "holder", l.Holder.Key(), "vip", l.Addr.String(), "err", err)
			m.opts.Store.DeleteAsync(l.Holder)
			continue
		}
		e := &entry{lease: l, created: taken}
		m.mu.Lock()
		m.holders[l.Holder] = e
		m.mu.Unlock()
		if rep.Rebooted || !snap.Alive(l.Holder) && !l.Holder.Session.Stock() {
			dead = append(dead, l.Holder)
			continue
		}
		rep.Adopted++
		for _, o := range m.observers {
			o.Granted(l)
		}
	}
	why := ReleaseDown
	if rep.Rebooted {
		why = ReleaseReboot
	}
	for _, h := range dead {
		if _, ok := m.release(h, why); ok {
			rep.Released++
		}
	}
	if err := m.opts.Store.SetMeta("boot_id", []byte(bootID)); err != nil {
		return rep, fmt.Errorf("restore: %w", err)
	}
	m.reap(snap, taken, false)
	return rep, nil
}

// Claim takes on a holder that the kernel shows using addr although no
// lease records it (the start-up cross-check, after Restore): the source
// takes the address back, the lease is made durable, and observers see a
// grant. Only sources that implement source.Claimer can.
func (m *Manager) Claim(h lease.Holder, addr netip.Addr, uid uint32) (lease.Lease, error) {
	c, ok := m.opts.Source.(source.Claimer)
	if !ok {
		return lease.Lease{}, fmt.Errorf("the %s source cannot take back an address without its lease record", m.opts.Source.Name())
	}
	m.mu.RLock()
	_, has := m.holders[h]
	m.mu.RUnlock()
	if has {
		return lease.Lease{}, fmt.Errorf("claim %s for %s: the holder has a lease already", addr, h)
	}
	l, err := c.Claim(h, addr)
	if err != nil {
		return lease.Lease{}, err
	}
	l.UID = uid
	if err := m.opts.Store.Put(l); err != nil {
		m.opts.Source.Release(l)
		return lease.Lease{}, fmt.Errorf("persist lease %s for %s: %w", addr, h, err)
	}
	e := &entry{lease: l, created: m.opts.Now()}
	m.mu.Lock()
	m.holders[h] = e
	m.mu.Unlock()
	for _, o := range m.observers {
		o.Granted(l)
	}
	return l, nil
}

// ReadBootID returns this boot's id ("unknown" where the kernel has none):
// session ids, and with them leases and registrations, are per boot.
func ReadBootID() string {
	b, err := os.ReadFile(BootIDPath)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
