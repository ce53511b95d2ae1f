package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Everything a server, a neighbour or the disk can hand us is fuzzed.

func FuzzParseState(f *testing.F) {
	f.Add(leaseState{ClientID: ClientID([]byte("h"), "a:1"), ServerID: netip.MustParseAddr("10.0.0.1"),
		ServerMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Bound: time.Unix(1700000000, 0),
		Lease: time.Hour, T1: time.Minute, T2: 2 * time.Minute}.marshal())
	f.Add(leaseState{ClientID: []byte{1, 2}, ServerID: netip.MustParseAddr("10.0.0.1"), Infinite: true}.marshal())
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseState(b)
		if err != nil {
			return
		}
		// Whatever parses re-encodes to the same bytes.
		if again := st.marshal(); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", b, again)
		}
		if !st.Infinite && !(st.T1 > 0 && st.T1 <= st.T2 && st.T2 <= st.Lease) {
			t.Fatalf("accepted timers %+v", st)
		}
	})
}

func FuzzParseGrant(f *testing.F) {
	for _, m := range []*dhcpv4.DHCPv4{
		reply(dhcpv4.MessageTypeAck),
		reply(dhcpv4.MessageTypeOffer, dhcpv4.WithNetmask(net.CIDRMask(20, 32))),
		reply(dhcpv4.MessageTypeAck, dhcpv4.WithGeneric(dhcpv4.OptionRenewTimeValue, []byte{0, 0, 0, 9})),
		reply(dhcpv4.MessageTypeAck, dhcpv4.WithGeneric(dhcpv4.OptionIPAddressLeaseTime, []byte{0, 0, 0, 1})),
	} {
		f.Add(m.ToBytes())
	}
	adapter := netip.MustParsePrefix("10.0.0.2/24")
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		g, err := parseGrant(m, adapter)
		if err != nil {
			return
		}
		if g.Addr.IsLoopback() || !usableAddr(g.Addr, adapter) || !g.Subnet.Contains(g.Addr) || g.ServerID.IsUnspecified() {
			t.Fatalf("accepted grant %+v", g)
		}
		if !g.Infinite && !(g.T1 > 0 && g.T1 <= g.T2 && g.T2 <= g.Lease) {
			t.Fatalf("accepted timers %+v", g)
		}
		// A grant must survive the trip through Lease.State.
		st := leaseState{ClientID: []byte{1, 2}, ServerID: g.ServerID, Lease: g.Lease, T1: g.T1, T2: g.T2, Infinite: g.Infinite}
		back, err := parseState(st.marshal())
		if err != nil {
			t.Fatalf("grant %+v does not persist: %v", g, err)
		}
		if back.Lease != g.Lease || back.T1 != g.T1 || back.T2 != g.T2 {
			t.Fatalf("grant %+v persists as %+v", g, back)
		}
	})
}

func FuzzParseUDP4(f *testing.F) {
	f.Add(buildUDP4(netip.MustParseAddrPort("10.0.0.1:67"), netip.MustParseAddrPort("255.255.255.255:68"), []byte("hello")))
	f.Fuzz(func(t *testing.T, b []byte) {
		src, dst, payload, ok := parseUDP4(b)
		if !ok {
			return
		}
		if len(payload) > len(b) || !src.Addr().Is4() || !dst.Addr().Is4() {
			t.Fatalf("parsed %v %v %d from %d bytes", src, dst, len(payload), len(b))
		}
	})
}
