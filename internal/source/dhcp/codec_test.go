package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ipvirt/ipvirt/internal/arp"
)

func TestStateRoundTrip(t *testing.T) {
	for _, st := range []leaseState{
		{ClientID: ClientID([]byte("h"), "a:1"), ServerID: netip.MustParseAddr("10.0.0.1"),
			ServerMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Bound: time.Unix(1700000000, 123456789),
			Lease: time.Hour, T1: 30 * time.Minute, T2: 52*time.Minute + 30*time.Second},
		{ClientID: []byte{1, 2}, ServerID: netip.MustParseAddr("192.0.2.7"), Bound: time.Unix(5, 0),
			Lease: 10 * time.Second, T1: 5 * time.Second, T2: 8 * time.Second},
		{ClientID: []byte{0, 1, 2}, ServerID: netip.MustParseAddr("192.0.2.8"), Bound: time.Unix(5, 0), Infinite: true},
		// A one-second lease: default T1/T2 are fractions of a second.
		{ClientID: []byte{0, 1}, ServerID: netip.MustParseAddr("192.0.2.9"), Bound: time.Unix(5, 0),
			Lease: time.Second, T1: 500 * time.Millisecond, T2: 875 * time.Millisecond},
	} {
		got, err := parseState(st.marshal())
		if err != nil {
			t.Fatalf("parse(marshal(%+v)): %v", st, err)
		}
		if !bytes.Equal(got.ClientID, st.ClientID) || got.ServerID != st.ServerID || !bytes.Equal(got.ServerMAC, st.ServerMAC) ||
			!got.Bound.Equal(st.Bound) || got.Lease != st.Lease || got.T1 != st.T1 || got.T2 != st.T2 || got.Infinite != st.Infinite {
			t.Fatalf("round trip: %+v != %+v", got, st)
		}
	}
}

func TestStateRejects(t *testing.T) {
	good := leaseState{ClientID: []byte{1, 2, 3}, ServerID: netip.MustParseAddr("10.0.0.1"), Bound: time.Unix(9, 0),
		Lease: 100 * time.Second, T1: 50 * time.Second, T2: 80 * time.Second}.marshal()
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"version 2", mut(func(b []byte) []byte { b[0] = 2; return b })},
		{"truncated", good[:20]},
		{"client id length too long", mut(func(b []byte) []byte { b[44] = 200; return b })},
		{"client id length 1", mut(func(b []byte) []byte { b[44] = 1; return b[:46] })},
		{"trailing garbage", append(append([]byte(nil), good...), 0)},
		{"unknown flag", mut(func(b []byte) []byte { b[1] = 0x80; return b })},
		{"server 0.0.0.0", mut(func(b []byte) []byte { copy(b[2:6], []byte{0, 0, 0, 0}); return b })},
		{"T1 after T2", mut(func(b []byte) []byte { b[33] = 0xff; return b })},
		{"T1 zero", mut(func(b []byte) []byte { clear(b[28:36]); return b })},
		{"lease beyond 2^32 s", mut(func(b []byte) []byte { b[20] = 0x7f; return b })},
	} {
		if _, err := parseState(tc.b); err == nil {
			t.Errorf("%s: parsed", tc.name)
		}
	}
}

func reply(typ dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	m, _ := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithMessageType(typ),
		dhcpv4.WithYourIP(net.IP{10, 0, 0, 50}),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{10, 0, 0, 1})),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(time.Hour))}, mods...)...)
	return m
}

func TestParseGrant(t *testing.T) {
	adapter := netip.MustParsePrefix("10.0.0.2/16")
	secs := func(code dhcpv4.OptionCode, s uint32) dhcpv4.Modifier {
		return dhcpv4.WithGeneric(code, []byte{byte(s >> 24), byte(s >> 16), byte(s >> 8), byte(s)})
	}
	for _, tc := range []struct {
		name             string
		m                *dhcpv4.DHCPv4
		wantErr          bool
		subnet           string
		t1, t2, leaseDur time.Duration
		infinite         bool
	}{
		{name: "defaults", m: reply(dhcpv4.MessageTypeAck), subnet: "10.0.0.0/16",
			leaseDur: time.Hour, t1: 30 * time.Minute, t2: 52*time.Minute + 30*time.Second},
		{name: "mask and timers", m: reply(dhcpv4.MessageTypeAck, dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			secs(dhcpv4.OptionRenewTimeValue, 100), secs(dhcpv4.OptionRebindingTimeValue, 200)),
			subnet: "10.0.0.0/24", leaseDur: time.Hour, t1: 100 * time.Second, t2: 200 * time.Second},
		{name: "T1 > T2 ignored", m: reply(dhcpv4.MessageTypeAck, secs(dhcpv4.OptionRenewTimeValue, 300),
			secs(dhcpv4.OptionRebindingTimeValue, 200)),
			subnet: "10.0.0.0/16", leaseDur: time.Hour, t1: 30 * time.Minute, t2: 52*time.Minute + 30*time.Second},
		{name: "T2 beyond lease ignored", m: reply(dhcpv4.MessageTypeAck, secs(dhcpv4.OptionRebindingTimeValue, 7200)),
			subnet: "10.0.0.0/16", leaseDur: time.Hour, t1: 30 * time.Minute, t2: 52*time.Minute + 30*time.Second},
		{name: "non-contiguous mask", m: reply(dhcpv4.MessageTypeAck, dhcpv4.WithGeneric(dhcpv4.OptionSubnetMask, []byte{255, 0, 255, 0})),
			subnet: "10.0.0.50/32", leaseDur: time.Hour, t1: 30 * time.Minute, t2: 52*time.Minute + 30*time.Second},
		{name: "infinite", m: reply(dhcpv4.MessageTypeAck, secs(dhcpv4.OptionIPAddressLeaseTime, 0xffffffff)),
			subnet: "10.0.0.0/16", infinite: true},
		{name: "one second", m: reply(dhcpv4.MessageTypeAck, secs(dhcpv4.OptionIPAddressLeaseTime, 1)),
			subnet: "10.0.0.0/16", leaseDur: time.Second, t1: 500 * time.Millisecond, t2: 875 * time.Millisecond},
		// 0xfffffffe s (just under infinite): Lease*7/8 overflowed time.Duration into a negative T2.
		{name: "longest finite lease", m: reply(dhcpv4.MessageTypeAck, secs(dhcpv4.OptionIPAddressLeaseTime, 0xfffffffe)),
			subnet: "10.0.0.0/16", leaseDur: 0xfffffffe * time.Second, t1: 0x7fffffff * time.Second, t2: 0xfffffffe*time.Second - 0xfffffffe*time.Second/8},
		{name: "410986 hours", m: reply(dhcpv4.MessageTypeAck, secs(dhcpv4.OptionIPAddressLeaseTime, 410986*3600)),
			subnet: "10.0.0.0/16", leaseDur: 410986 * time.Hour, t1: 205493 * time.Hour, t2: 410986*time.Hour - 410986*time.Hour/8},
		{name: "no lease time", m: reply(dhcpv4.MessageTypeAck, dhcpv4.WithoutOption(dhcpv4.OptionIPAddressLeaseTime)), wantErr: true},
		{name: "zero lease", m: reply(dhcpv4.MessageTypeAck, secs(dhcpv4.OptionIPAddressLeaseTime, 0)), wantErr: true},
		{name: "no server id", m: reply(dhcpv4.MessageTypeAck, dhcpv4.WithoutOption(dhcpv4.OptionServerIdentifier)), wantErr: true},
		{name: "short server id", m: reply(dhcpv4.MessageTypeAck, dhcpv4.WithGeneric(dhcpv4.OptionServerIdentifier, []byte{1, 2})), wantErr: true},
		{name: "yiaddr zero", m: reply(dhcpv4.MessageTypeAck, dhcpv4.WithYourIP(net.IPv4zero)), wantErr: true},
		{name: "yiaddr broadcast", m: reply(dhcpv4.MessageTypeAck, dhcpv4.WithYourIP(net.IPv4bcast)), wantErr: true},
		{name: "yiaddr multicast", m: reply(dhcpv4.MessageTypeAck, dhcpv4.WithYourIP(net.IP{224, 0, 0, 1})), wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := parseGrant(tc.m, adapter)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("no error, grant %+v", g)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if g.Subnet.String() != tc.subnet || g.Lease != tc.leaseDur || g.T1 != tc.t1 || g.T2 != tc.t2 || g.Infinite != tc.infinite {
				t.Fatalf("grant %+v", g)
			}
		})
	}
}

// A loopback address is a VIP only on the loopback adapter (the loopback
// topology), like a 127/8 static pool.
func TestParseGrantLoopback(t *testing.T) {
	m, err := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithYourIP(net.IPv4(127, 79, 0, 10)),
		dhcpv4.WithServerIP(net.IPv4(127, 0, 0, 1)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(127, 0, 0, 1))),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseGrant(m, netip.MustParsePrefix("10.0.0.2/24")); err == nil {
		t.Fatal("a loopback yiaddr was accepted on an Ethernet adapter")
	}
	g, err := parseGrant(m, netip.MustParsePrefix("127.0.0.1/8"))
	if err != nil || g.Addr != netip.MustParseAddr("127.79.0.10") {
		t.Fatalf("on the loopback adapter: %+v, %v", g, err)
	}
}
func TestFrameRoundTrip(t *testing.T) {
	src := netip.MustParseAddrPort("0.0.0.0:68")
	dst := netip.MustParseAddrPort("255.255.255.255:67")
	for _, n := range []int{0, 1, 300, 1401} {
		payload := bytes.Repeat([]byte{0xa5}, n)
		f := buildUDP4(src, dst, payload)
		s, d, p, ok := parseUDP4(f)
		if !ok || s != src || d != dst || !bytes.Equal(p, payload) {
			t.Fatalf("n=%d: %v %v %v ok=%v", n, s, d, len(p), ok)
		}
		// The UDP checksum over pseudo-header and datagram verifies.
		pseudo := append(append([]byte{}, f[12:20]...), 0, protoUDP, f[24], f[25])
		if c := checksum(uint32(checksum(0, pseudo)), f[20:]); c != 0xffff {
			t.Fatalf("n=%d: UDP checksum does not verify: %#x", n, c)
		}
	}
	f := buildUDP4(src, dst, []byte("x"))
	for name, mutate := range map[string]func([]byte){
		"bad header checksum": func(b []byte) { b[10] ^= 1 },
		"fragment":            func(b []byte) { b[7] = 1 },
		"tcp":                 func(b []byte) { b[9] = 6 },
		"ipv6":                func(b []byte) { b[0] = 0x65 },
		"short total":         func(b []byte) { b[3] = 20 },
	} {
		b := append([]byte(nil), f...)
		mutate(b)
		if _, _, _, ok := parseUDP4(b); ok {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestARPConflict(t *testing.T) {
	ours := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	other := [6]byte{2, 0, 0, 0, 0, 2}
	ip := netip.MustParseAddr("10.0.0.9")
	zero := netip.IPv4Unspecified()
	for _, tc := range []struct {
		name string
		p    arp.Packet
		want bool
	}{
		{"reply from the owner", arp.Packet{Op: arp.Reply, SenderHW: other, SenderIP: ip, TargetIP: zero}, true},
		{"owner asks someone", arp.Packet{Op: arp.Request, SenderHW: other, SenderIP: ip, TargetIP: netip.MustParseAddr("10.0.0.1")}, true},
		{"simultaneous probe", arp.Packet{Op: arp.Request, SenderHW: other, SenderIP: zero, TargetIP: ip}, true},
		{"our own VIP answering", arp.Packet{Op: arp.Reply, SenderHW: [6]byte(ours), SenderIP: ip}, false},
		{"someone asking for it", arp.Packet{Op: arp.Request, SenderHW: other, SenderIP: netip.MustParseAddr("10.0.0.1"), TargetIP: ip}, false},
		{"unrelated", arp.Packet{Op: arp.Reply, SenderHW: other, SenderIP: netip.MustParseAddr("10.0.0.3")}, false},
	} {
		p, err := arp.Parse(tc.p.Marshal())
		if err != nil {
			t.Fatalf("%s: marshal/parse: %v", tc.name, err)
		}
		if got := conflicts(p, ip, ours); got != tc.want {
			t.Errorf("%s: conflict %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	s := &Source{cfg: Config{RetransmitBase: 4 * time.Second}}
	for n, want := range []time.Duration{4, 8, 16, 32, 64, 64, 64} {
		want *= time.Second
		for range 50 {
			if d := s.backoff(n); d < want-time.Second || d > want+time.Second {
				t.Fatalf("attempt %d: %s, want %s ±1s (RFC 2131 4.1)", n, d, want)
			}
		}
	}
	if d := s.declineWait(); d != 10*time.Second {
		t.Fatalf("decline wait %s, want RFC 2131's 10s", d)
	}
}
