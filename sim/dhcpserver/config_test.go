package dhcpserver

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

const sampleYAML = `
interface: eth0
listen: 0.0.0.0:67
server_id: 10.99.0.1
range_start: 10.99.0.100
range_end: 10.99.0.200
prefix_len: 22
router: 10.99.0.1
lease_time: 8s
t1: 2s
t2: 6s
offer_hold: 5s
decline_hold: 1m
latency: 5ms
drop_rate: 0.1
nak_rate: 0.05
nak_first: 1
nak_clients: ["id:ff00", "hw:02:00:00:00:00:01"]
offline:
  - {from: 10s, until: 20s}
arp_in_use: [10.99.0.100]
client_port: 68
seed: 42
`

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(sampleYAML))
	if err != nil {
		t.Fatal(err)
	}
	if c.Interface != "eth0" || c.ServerID != netip.MustParseAddr("10.99.0.1") || c.PrefixLen != 22 ||
		c.LeaseTime != 8*time.Second || c.T1 != 2*time.Second || c.T2 != 6*time.Second ||
		c.Latency != 5*time.Millisecond || c.DropRate != 0.1 || c.NAKFirst != 1 || len(c.NAKClients) != 2 ||
		len(c.Offline) != 1 || c.Offline[0].Until != 20*time.Second || len(c.ARPInUse) != 1 || c.Seed != 42 {
		t.Fatalf("parsed %+v", c)
	}
	if _, err := ParseConfig([]byte(sampleYAML + "lease_tme: 3s\n")); err == nil || !strings.Contains(err.Error(), "lease_tme") {
		t.Fatalf("a typo'd key was accepted: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	base := Config{RangeStart: netip.MustParseAddr("10.0.0.10"), RangeEnd: netip.MustParseAddr("10.0.0.20")}
	if err := base.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no range", func(c *Config) { c.RangeStart = netip.Addr{} }, "range_start"},
		{"reversed range", func(c *Config) { c.RangeEnd = netip.MustParseAddr("10.0.0.1") }, "range_end 10.0.0.1 is before"},
		{"ipv6 range", func(c *Config) { c.RangeEnd = netip.MustParseAddr("::1") }, "range_end"},
		{"listen", func(c *Config) { c.Listen = "nowhere" }, `listen "nowhere"`},
		{"prefix", func(c *Config) { c.PrefixLen = 33 }, "prefix_len 33"},
		{"drop rate", func(c *Config) { c.DropRate = 1.5 }, "drop_rate 1.5"},
		{"nak rate", func(c *Config) { c.NAKRate = -0.1 }, "nak_rate -0.1"},
		{"timers", func(c *Config) { c.LeaseTime, c.T1, c.T2 = 10*time.Second, 8*time.Second, 4*time.Second }, "t1 8s / t2 4s"},
		{"t2 beyond lease", func(c *Config) { c.LeaseTime, c.T2 = 10*time.Second, 20*time.Second }, "t2 20s"},
		{"window", func(c *Config) { c.Offline = []Window{{From: 5 * time.Second, Until: time.Second}} }, "offline[0]"},
		{"arp without interface", func(c *Config) { c.ARPInUse = []netip.Addr{netip.MustParseAddr("10.0.0.10")} }, "arp_in_use needs interface"},
		{"client port", func(c *Config) { c.ClientPort = 70000 }, "client_port 70000"},
		{"nak_first", func(c *Config) { c.NAKFirst = -1 }, "nak_first -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			tc.mod(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// A lease time near the 32-bit limit is valid; its default T2 used to be
// lease*7/8, which overflowed into a negative duration and made Validate
// refuse the file with a nonsensical "t2 -...".
func TestLongLeaseTimers(t *testing.T) {
	for _, lease := range []time.Duration{2_000_000_000 * time.Second, 0xfffffffe * time.Second} {
		c, err := ParseConfig([]byte(fmt.Sprintf("range_start: 10.0.0.1\nrange_end: 10.0.0.2\nlease_time: %s\n", lease)))
		if err != nil {
			t.Fatalf("lease_time %s: %v", lease, err)
		}
		t1, t2 := c.timers()
		if t1 != lease/2 || t2 != lease-lease/8 || t2 <= t1 || t2 > lease {
			t.Fatalf("lease_time %s: t1 %s t2 %s", lease, t1, t2)
		}
	}
	if _, err := ParseConfig([]byte("range_start: 10.0.0.1\nrange_end: 10.0.0.2\nlease_time: 4294967296s\n")); err == nil ||
		!strings.Contains(err.Error(), "lease_time 1193046h28m16s out of range") {
		t.Fatalf("lease_time past 32 bits: %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(sampleYAML))
	f.Add([]byte("range_start: 10.0.0.1\nrange_end: 10.0.0.2\n"))
	f.Add([]byte("range_start: 10.0.0.1\nrange_end: 10.0.0.2\nlease_time: 4294967294s\n"))
	f.Add([]byte("range_start: 10.0.0.1\nrange_end: 10.0.0.9\nlease_time: 3s\nt1: 1s\nt2: 2500ms\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		// Whatever parses is a server the table can run.
		c = c.withDefaults()
		t1, t2 := c.timers()
		if c.RangeEnd.Less(c.RangeStart) || t1 <= 0 || t2 < t1 || c.LeaseTime < t2 || secs(c.LeaseTime) == 0 {
			t.Fatalf("accepted %+v", c)
		}
		// What goes on the wire (options 51, 58, 59) is ordered and never
		// the "infinite" 0xffffffff.
		if l, s1, s2 := secs(c.LeaseTime), secs(t1), secs(t2); s1 > s2 || s2 > l || l == 0xffffffff {
			t.Fatalf("options: lease %d t1 %d t2 %d from %+v", l, s1, s2, c)
		}
		for i, w := range c.Offline {
			if w.From < 0 || w.Until <= w.From {
				t.Fatalf("offline[%d] %+v accepted", i, w)
			}
		}
		if c.PrefixLen < 1 || c.PrefixLen > 32 || c.ClientPort < 1 || c.ClientPort > 65535 {
			t.Fatalf("accepted prefix %d port %d", c.PrefixLen, c.ClientPort)
		}
	})
}

// FuzzDecide feeds arbitrary packets to the server's decision logic: the
// first thing that sees untrusted input after the codec.
func FuzzDecide(f *testing.F) {
	c := &relayClient{mac: []byte{2, 0, 0, 0, 0, 1}, t: &testing.T{}}
	for _, typ := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest,
		dhcpv4.MessageTypeDecline, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeInform} {
		f.Add(c.msg(typ, "x", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 0, 0, 11)))).ToBytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		s, err := newServer(Config{Listen: "127.0.0.1:0", RangeStart: netip.MustParseAddr("10.0.0.10"),
			RangeEnd: netip.MustParseAddr("10.0.0.12"), NAKRate: 0.2, Seed: 1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		for range 3 {
			s.mu.Lock()
			r := s.decide(m, now)
			s.mu.Unlock()
			if r != nil {
				_ = r.ToBytes()
				_ = s.destination(m, r, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 67})
			}
		}
		for _, l := range s.Leases() {
			if !s.table.inRange(l.Addr) {
				t.Fatalf("leased %s outside the range", l.Addr)
			}
		}
	})
}
