package alloc

import (
	"net/netip"
	"testing"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// DuplicateVIPs counts each address held twice or more once, and leaves
// out acquisitions that have not finished.
func TestDuplicateVIPs(t *testing.T) {
	m := New(Options{}, Settings{})
	for i, a := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.3", "10.0.0.3", "10.0.0.3", "10.0.0.4"} {
		h := lease.Holder{Session: lease.Session{Kind: lease.KindAudit, ID: uint32(i + 1)}}
		m.holders[h] = &entry{lease: lease.Lease{Holder: h, Addr: netip.MustParseAddr(a)}}
	}
	// Pending: the address it may be given is not held yet.
	pending := lease.Holder{Session: lease.Session{Kind: lease.KindAudit, ID: 100}}
	m.holders[pending] = &entry{ready: make(chan struct{}), lease: lease.Lease{Addr: netip.MustParseAddr("10.0.0.1")}}
	if n := m.DuplicateVIPs(); n != 2 {
		t.Fatalf("DuplicateVIPs() = %d, want 2 (10.0.0.2 and 10.0.0.3)", n)
	}
}
