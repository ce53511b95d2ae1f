package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"go.yaml.in/yaml/v3"
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
	f.Add(append(buildUDP4(netip.MustParseAddrPort("0.0.0.0:68"), netip.MustParseAddrPort("10.0.0.1:67"), nil), 0, 0, 0, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		src, dst, payload, ok := parseUDP4(b)
		if !ok {
			return
		}
		// The payload lies inside the IP datagram, after both headers.
		total, ihl := int(b[2])<<8|int(b[3]), int(b[0]&0x0f)*4
		at := ihl + udpHeaderLen
		if total > len(b) || at+len(payload) > total || !bytes.Equal(payload, b[at:at+len(payload)]) ||
			!src.Addr().Is4() || !dst.Addr().Is4() {
			t.Fatalf("parsed %v %v %d bytes from a %d-byte datagram in %d bytes", src, dst, len(payload), total, len(b))
		}
		// Whatever parses is rebuilt by buildUDP4 into a frame that
		// parses to the same addresses and payload.
		s2, d2, p2, ok := parseUDP4(buildUDP4(src, dst, payload))
		if !ok || s2 != src || d2 != dst || !bytes.Equal(p2, payload) {
			t.Fatalf("round trip of %v %v %x: %v %v %x %v", src, dst, payload, s2, d2, p2, ok)
		}
	})
}

// FuzzConfig: the `dhcp:` section of ipvirt.yaml. What Validate accepts
// must keep the arithmetic on it in range: every retransmission and NAK
// pause positive and bounded (16 times retransmit_base used to overflow),
// and a relay server address that parses.
func FuzzConfig(f *testing.F) {
	f.Add([]byte("lease_wait: 5s\nmax_inflight: 8\nretransmit_base: 500ms\nrenew_retry_min: 2s\narp_probe_wait: 200ms\n"))
	f.Add([]byte("server: 10.1.2.3:1067\nrelay_address: 10.1.2.9\nclient_port: 1068\nserver_port: 1067\n"))
	f.Add([]byte("retransmit_base: 1m\n"))
	f.Add([]byte("retransmit_base: 2562047h\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Config
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if dec.Decode(&c) != nil || c.Validate() != nil {
			return
		}
		c = c.WithDefaults()
		s := &Source{cfg: c}
		base := c.RetransmitBase
		for n := range 8 {
			if d := s.backoff(n); d <= 0 || d > 16*base+base/4 {
				t.Fatalf("retransmit_base %s: backoff(%d) = %s", base, n, d)
			}
		}
		for n := 1; n < 9; n++ {
			if d := s.backoffNAK(n); d < 0 || d > 4*base {
				t.Fatalf("retransmit_base %s: backoffNAK(%d) = %s", base, n, d)
			}
		}
		if d := s.declineWait(); d <= 0 {
			t.Fatalf("retransmit_base %s: decline wait %s", base, d)
		}
		if c.Server != "" {
			if _, err := c.serverAddr(); err != nil {
				t.Fatalf("accepted server %q: %v", c.Server, err)
			}
		}
		if c.MaxInflight < 1 || c.ClientPort < 1 || c.ClientPort > 65535 || c.ServerPort < 1 || c.ServerPort > 65535 {
			t.Fatalf("accepted %+v", c)
		}
	})
}

// FuzzClientID: the client identifier is RFC 4361 type 255 with a
// DUID-UUID (version 8, variant 10), and no two (host id, holder key)
// pairs share one: the host id is length-prefixed before the key.
func FuzzClientID(f *testing.F) {
	f.Add([]byte("host-a"), "a:42", []byte("host-a:"), "42")
	f.Add([]byte("host-"), "a:42", []byte("host-a"), "a:42|/usr/bin/psql")
	f.Add([]byte{}, "", []byte{0}, "")
	f.Fuzz(func(t *testing.T, host1 []byte, key1 string, host2 []byte, key2 string) {
		a := ClientID(host1, key1)
		if len(a) != 23 || a[0] != 0xff || a[5] != 0 || a[6] != 4 || a[7+6]>>4 != 8 || a[7+8]>>6 != 2 {
			t.Fatalf("client id %x of %q/%q", a, host1, key1)
		}
		if !bytes.Equal(a, ClientID(host1, key1)) {
			t.Fatal("client id not deterministic")
		}
		b := ClientID(host2, key2)
		same := bytes.Equal(host1, host2) && key1 == key2
		if bytes.Equal(a, b) != same {
			t.Fatalf("%q/%q and %q/%q: ids %x and %x", host1, key1, host2, key2, a, b)
		}
		if mac := fallbackMAC(host1); len(mac) != 6 || mac[0]&1 != 0 || mac[0]&2 == 0 {
			t.Fatalf("fallback MAC %s", mac)
		}
	})
}
