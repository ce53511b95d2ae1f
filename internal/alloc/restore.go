package alloc

import (
	"fmt"
	"os"
	"strings"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// BootIDPath holds a random id the kernel draws at every boot.
const BootIDPath = "/proc/sys/kernel/random/boot_id"

// RestoreReport says what Restore found.
type RestoreReport struct {
	Adopted   int // live holders that kept their VIP
	Released  int // holders that ended while the daemon was down
	Rebooted  bool
	Conflicts int // damaged records, or two leases claiming one address
}

// Restore adopts every persisted lease back into the source, then releases
// the leases whose holders are gone: all of them after a reboot (session ids
// restart), otherwise those a scan does not find. It must run before the
// first request is served, so no new holder can be given an address a live
// holder has.
func (m *Manager) Restore() (RestoreReport, error) {
	var rep RestoreReport
	bootID := readBootID()
	if prev := m.opts.Store.Meta("boot_id"); prev != nil && string(prev) != bootID {
		rep.Rebooted = true
	}
	leases, bad := m.opts.Store.Leases()
	for _, err := range bad {
		rep.Conflicts++
		m.log.Error("damaged lease record skipped", "err", err)
	}
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
	for _, l := range leases {
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
		if err := m.opts.Source.Adopt(l); err != nil {
			// Two records for one address can only come from a damaged
			// store. Keeping the first and dropping this one may strand a
			// live holder's address, but never hands it to two.
			rep.Conflicts++
			m.log.Error("lease not adopted", "holder", l.Holder.Key(), "vip", l.Addr.String(), "err", err)
			m.opts.Store.DeleteAsync(l.Holder)
			continue
		}
		e := &entry{ready: make(chan struct{}), lease: l, created: taken}
		close(e.ready)
		m.mu.Lock()
		m.holders[l.Holder] = e
		m.mu.Unlock()
		if rep.Rebooted || !snap.Alive(l.Holder) {
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
	m.Reap(snap, taken)
	return rep, nil
}

func readBootID() string {
	b, err := os.ReadFile(BootIDPath)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}
