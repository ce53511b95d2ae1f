package dhcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ipvirt/ipvirt/internal/pool"
)

// grant is what an OFFER or ACK grants, checked. Servers are untrusted
// input: every field is validated here and nowhere else.
type grant struct {
	Addr     netip.Addr
	Subnet   netip.Prefix
	ServerID netip.Addr
	Lease    time.Duration
	T1, T2   time.Duration
	Infinite bool
}

var errNoLeaseTime = errors.New("no lease time (option 51)")

// parseGrant extracts the grant from a server reply. adapter is the
// adapter's own prefix: the VIP subnet when the server sends no mask.
// defaultTimers returns RFC 2131 4.4.5's T1 (half the lease) and T2 (7/8
// of it). T2 is lease - lease/8, not lease*7/8: a lease just under the
// 32-bit "infinite" value is about 136 years, and 7 times that overflows
// time.Duration into a negative T2.
func defaultTimers(lease time.Duration) (t1, t2 time.Duration) {
	return lease / 2, lease - lease/8
}

func parseGrant(m *dhcpv4.DHCPv4, adapter netip.Prefix) (grant, error) {
	var g grant
	yi, ok := netip.AddrFromSlice(m.YourIPAddr.To4())
	if !ok || m.YourIPAddr.To4() == nil || !usableAddr(yi, adapter) {
		return g, fmt.Errorf("yiaddr %v is not a usable unicast address", m.YourIPAddr)
	}
	g.Addr = yi
	sid, ok := optAddr(m, dhcpv4.OptionServerIdentifier)
	if !ok || sid.IsUnspecified() {
		return g, errors.New("no server identifier (option 54)")
	}
	g.ServerID = sid

	lease, ok := optSeconds(m, dhcpv4.OptionIPAddressLeaseTime)
	switch {
	case !ok:
		return g, errNoLeaseTime
	case lease == 0xffffffff:
		g.Infinite = true
	case lease == 0:
		return g, errors.New("lease time 0")
	default:
		g.Lease = time.Duration(lease) * time.Second
		g.T1, g.T2 = defaultTimers(g.Lease)
		t1, ok1 := optSeconds(m, dhcpv4.OptionRenewTimeValue)
		t2, ok2 := optSeconds(m, dhcpv4.OptionRebindingTimeValue)
		if ok2 && t2 > 0 && uint64(t2) <= uint64(lease) {
			g.T2 = time.Duration(t2) * time.Second
		}
		if ok1 && t1 > 0 && time.Duration(t1)*time.Second <= g.T2 {
			g.T1 = time.Duration(t1) * time.Second
		}
		if g.T1 > g.T2 || g.T1 <= 0 {
			g.T1, g.T2 = defaultTimers(g.Lease)
		}
		if g.T1 <= 0 { // a 1-second lease
			g.T1, g.T2 = g.Lease, g.Lease
		}
	}

	bitsLen := 32
	if raw := m.Options.Get(dhcpv4.OptionSubnetMask); len(raw) == 4 {
		if ones, ok := pool.MaskBits(netip.AddrFrom4([4]byte(raw))); ok && ones > 0 {
			bitsLen = ones
		}
	} else if adapter.IsValid() && adapter.Contains(yi) {
		bitsLen = adapter.Bits()
	}
	g.Subnet = netip.PrefixFrom(yi, bitsLen).Masked()
	return g, nil
}

// usableAddr reports whether a can be a VIP on the adapter: a loopback
// address only when the adapter is the loopback (the simulator's loopback
// topology, like a 127/8 static pool), never elsewhere.
func usableAddr(a netip.Addr, adapter netip.Prefix) bool {
	if a.IsLoopback() && !adapter.Addr().IsLoopback() {
		return false
	}
	return a.Is4() && !a.IsUnspecified() && !a.IsMulticast() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

func optAddr(m *dhcpv4.DHCPv4, code dhcpv4.OptionCode) (netip.Addr, bool) {
	raw := m.Options.Get(code)
	if len(raw) != 4 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte(raw)), true
}

func optSeconds(m *dhcpv4.DHCPv4, code dhcpv4.OptionCode) (uint32, bool) {
	raw := m.Options.Get(code)
	if len(raw) != 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(raw), true
}
