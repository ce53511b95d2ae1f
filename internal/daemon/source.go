package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"

	"github.com/ipvirt/ipvirt/internal/alloc"
	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source"
	"github.com/ipvirt/ipvirt/internal/source/dhcp"
	"github.com/ipvirt/ipvirt/internal/source/etcd"
	"github.com/ipvirt/ipvirt/internal/source/static"
)

func (d *Daemon) newSource(cfg config.Config) (source.Source, error) {
	switch cfg.Source {
	case static.Name:
		return static.New(cfg.StaticPool)
	case dhcp.Name:
		hostID, err := d.hostID()
		if err != nil {
			return nil, err
		}
		ifc := dhcp.Interface{Name: d.adapter.Name, Index: d.adapter.Index, MAC: d.adapter.MAC, Prefix: d.adapter.Addr}
		src, err := dhcp.New(cfg.DHCP, ifc, hostID, &d.events, d.log)
		if err != nil {
			return nil, fmt.Errorf("source dhcp: %w", err)
		}
		return src, nil
	case etcd.Name:
		hostID, err := d.hostID()
		if err != nil {
			return nil, err
		}
		src, err := etcd.New(cfg.Etcd, cfg.StaticPool.Range(), hostID, cfg.StateDir, &d.events, d.log)
		if err != nil {
			return nil, fmt.Errorf("source etcd: %w", err)
		}
		return src, nil
	default:
		return nil, fmt.Errorf("source: %q is not available", cfg.Source)
	}
}

// hostID is the stable id DHCP client identifiers derive from (and etcd
// records name their host by), so that a
// restarted daemon asks for (and usually gets) the same addresses. It is the
// systemd machine id where there is one (a cloned VM image gets a new one,
// and must not share client ids with its original), else a random id drawn
// once and kept in the store.
func (d *Daemon) hostID() ([]byte, error) {
	for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
		if b, err := os.ReadFile(p); err == nil {
			if id, err := hex.DecodeString(strings.TrimSpace(string(b))); err == nil && len(id) >= 16 {
				return id, nil
			}
		}
	}
	if id := d.store.Meta("host_id"); len(id) >= 16 {
		return id, nil
	}
	id := make([]byte, 16)
	rand.Read(id)
	if err := d.store.SetMeta("host_id", id); err != nil {
		return nil, fmt.Errorf("host id: %w", err)
	}
	d.log.Info("no machine id: drew a host id for DHCP client identifiers", "host_id", hex.EncodeToString(id))
	return id, nil
}

// eventsRelay hands a source's events to the manager, which is created
// after the source it needs.
type eventsRelay struct{ m atomic.Pointer[alloc.Manager] }

func (r *eventsRelay) Renewed(l lease.Lease) {
	if m := r.m.Load(); m != nil {
		m.Renewed(l)
	}
}

func (r *eventsRelay) Lost(h lease.Holder, addr netip.Addr, reason error) {
	if m := r.m.Load(); m != nil {
		m.Lost(h, addr, reason)
	}
}
