package wirecheck

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"

	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/topology"
)

// needPrivilege skips a test that cannot run here, except in CI, where a
// missing privilege would otherwise turn the capture tests silently green.
func needPrivilege(t *testing.T, why string) {
	t.Helper()
	msg := "needs root: network namespaces (" + why + ")"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// lan is the simulator's own LAN (sim/topology): a namespace holding the
// bridge, and hosts a (10.99.0.1) and b (10.99.0.2) attached by veth
// pairs. Two addresses in one namespace would never reach the wire (the
// kernel delivers them over lo, without ARP), so the hosts need namespaces
// of their own.
type lan struct {
	net        *topology.Net
	a, b       *topology.Host
	macA, macB net.HardwareAddr
	portA      int // ifindex, in the bridge's namespace, of the port host a sends into
}

func newLAN(t *testing.T) *lan {
	n, err := topology.Build(topology.Spec{
		LANs:  []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")},
		Hosts: []topology.HostSpec{{Name: "a", Adapters: []int{1}}, {Name: "b", Adapters: []int{2}}},
	})
	if errors.Is(err, unix.EPERM) {
		needPrivilege(t, err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("remove the LAN: %v", err)
		}
	})
	l := &lan{net: n}
	l.a, _ = n.Host("a")
	l.b, _ = n.Host("b")
	l.macA, l.macB = l.a.Adapters[0].MAC, l.b.Adapters[0].MAC
	// topology names host i's port on LAN j "h<i>p<j>".
	err = n.Do("lan", func() error {
		p, err := net.InterfaceByName("h0p0")
		if err == nil {
			l.portA = p.Index
		}
		return err
	})
	if err != nil {
		t.Fatalf("host a's bridge port: %v", err)
	}
	return l
}

func TestCaptureOnLAN(t *testing.T) {
	testenv.RequireRoot(t)
	l := newLAN(t)
	c, err := Start(func(fn func() error) error { return l.net.Do("lan", fn) })
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer c.Stop()

	// TCP: the connect also makes host a ARP for host b.
	var ln net.Listener
	if err := l.b.Do(func() (err error) { ln, err = net.Listen("tcp4", "10.99.0.2:0"); return err }); err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	accepted := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			conn.Close()
		}
		accepted <- err
	}()
	var conn net.Conn
	err = l.a.Do(func() (err error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(10, 99, 0, 1)}, Timeout: 5 * time.Second}
		conn, err = d.Dial("tcp4", ln.Addr().String())
		return err
	})
	if err != nil {
		t.Fatalf("connect 10.99.0.1 -> %s: %v", ln.Addr(), err)
	}
	defer conn.Close()
	if err := <-accepted; err != nil {
		t.Fatalf("accept: %v", err)
	}
	src := netip.MustParseAddrPort(conn.LocalAddr().String())
	dst := netip.MustParseAddrPort(ln.Addr().String())

	// DHCP: a listener on b makes the datagram's arrival observable (and
	// keeps ICMP port-unreachable out of the capture).
	var server, client net.PacketConn
	if err := l.b.Do(func() (err error) { server, err = net.ListenPacket("udp4", "10.99.0.2:67"); return err }); err != nil {
		t.Fatalf("listen udp 67: %v", err)
	}
	defer server.Close()
	if err := l.a.Do(func() (err error) { client, err = net.ListenPacket("udp4", "10.99.0.1:68"); return err }); err != nil {
		t.Fatalf("bind udp 68: %v", err)
	}
	defer client.Close()
	clientID := []byte{0xff, 1, 2, 3}
	discover, err := dhcpv4.NewDiscovery(l.macA, dhcpv4.WithOption(dhcpv4.OptClientIdentifier(clientID)))
	if err != nil {
		t.Fatalf("build DHCPDISCOVER: %v", err)
	}
	if _, err := client.WriteTo(discover.ToBytes(), &net.UDPAddr{IP: net.IPv4(10, 99, 0, 2), Port: 67}); err != nil {
		t.Fatalf("send DHCPDISCOVER: %v", err)
	}
	if err := server.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := server.ReadFrom(make([]byte, 1500)); err != nil {
		t.Fatalf("DHCPDISCOVER did not arrive: %v", err)
	}

	running := c.Frames()
	stopping := time.Now()
	frames := c.Stop()
	if d := time.Since(stopping); d > 2*time.Second {
		t.Errorf("Stop took %v; the receive timeout should bound it", d)
	}
	if len(frames) < len(running) {
		t.Errorf("Stop returned %d frames, fewer than the %d seen while running", len(frames), len(running))
	}
	if again := c.Stop(); len(again) != len(frames) {
		t.Errorf("second Stop returned %d frames, first %d", len(again), len(frames))
	}
	dump := func() string {
		var b strings.Builder
		for _, f := range frames {
			b.WriteString("\n\t" + Describe(f))
		}
		return b.String()
	}

	t.Run("SYN once, from its ingress port", func(t *testing.T) {
		var n int
		for _, s := range SYNs(frames) {
			if s.Src == src && s.Dst == dst {
				n++
				if !bytes.Equal(s.SrcMAC, l.macA) {
					t.Errorf("SYN from MAC %s, want %s", s.SrcMAC, l.macA)
				}
			}
		}
		// The bridge forwards the SYN out of port b too; keeping egress
		// frames would count it twice.
		if n != 1 {
			t.Errorf("saw %d SYNs %s > %s, want 1; capture:%s", n, src, dst, dump())
		}
		for _, f := range UsesOf(frames, src.Addr(), time.Time{}) {
			if d := Describe(f); strings.Contains(d, "[SYN]") && f.Ifindex != l.portA {
				t.Errorf("SYN captured on ifindex %d, want port a (%d): %s", f.Ifindex, l.portA, d)
			}
		}
	})
	t.Run("DHCP", func(t *testing.T) {
		var found bool
		for _, m := range DHCP(frames) {
			if m.Type != "DISCOVER" {
				continue
			}
			found = true
			want := DHCPMsg{XID: uint32(discover.TransactionID[0])<<24 | uint32(discover.TransactionID[1])<<16 |
				uint32(discover.TransactionID[2])<<8 | uint32(discover.TransactionID[3]),
				Src: netip.MustParseAddrPort("10.99.0.1:68"), Dst: netip.MustParseAddrPort("10.99.0.2:67")}
			if m.XID != want.XID || !bytes.Equal(m.ClientID, clientID) || !bytes.Equal(m.ClientHW, l.macA) ||
				!bytes.Equal(m.SrcMAC, l.macA) || m.Src != want.Src || m.Dst != want.Dst ||
				m.ClientIP.IsValid() || m.YourIP.IsValid() {
				t.Errorf("DISCOVER = %+v, want xid 0x%x client-id %x chaddr %s %s > %s",
					m, want.XID, clientID, l.macA, want.Src, want.Dst)
			}
		}
		if !found {
			t.Errorf("no DHCPDISCOVER captured:%s", dump())
		}
	})
	t.Run("ARP reply", func(t *testing.T) {
		var found bool
		for _, a := range ARPs(frames) {
			if a.Reply && a.SenderIP == netip.MustParseAddr("10.99.0.2") {
				found = true
				if !bytes.Equal(a.SenderMAC, l.macB) || !bytes.Equal(a.EthSrc, l.macB) {
					t.Errorf("ARP reply for 10.99.0.2 = %+v, want sender %s", a, l.macB)
				}
			}
		}
		if !found {
			t.Errorf("no ARP reply from 10.99.0.2:%s", dump())
		}
	})
	t.Run("UsesOf and Describe", func(t *testing.T) {
		uses := UsesOf(frames, netip.MustParseAddr("10.99.0.1"), time.Time{})
		if len(uses) == 0 {
			t.Errorf("no use of 10.99.0.1:%s", dump())
		}
		if u := UsesOf(frames, netip.MustParseAddr("10.99.0.77"), time.Time{}); len(u) != 0 {
			t.Errorf("10.99.0.77 used in %d frames, first %s", len(u), Describe(u[0]))
		}
		var syn, dhcp bool
		for _, f := range uses {
			d := Describe(f)
			syn = syn || strings.Contains(d, fmt.Sprintf("TCP %s > %s [SYN]", src, dst))
			dhcp = dhcp || strings.Contains(d, "DHCP DISCOVER") && strings.Contains(d, "client-id=ff010203") &&
				strings.Contains(d, "10.99.0.1:68 > 10.99.0.2:67")
		}
		if !syn || !dhcp {
			t.Errorf("descriptions lack the SYN (%v) or the DISCOVER (%v):%s", syn, dhcp, dump())
		}
	})
}
