package adapter

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ipvirt/ipvirt/internal/arp"
)

// Installing a VIP announces it: the LAN sees a gratuitous ARP naming the
// VIP at the adapter's MAC, so a neighbour that cached the address at
// another host's MAC (a farm's VIP that moved) updates at once.
func TestInstallerAnnounces(t *testing.T) {
	lan := inNetns(t)
	eth := uplink(t, lan, "eth0", "10.51.0.2/24")
	host, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	// Listen on the peer, in the LAN's namespace.
	if err := netns.Set(lan); err != nil {
		t.Fatal(err)
	}
	peer, err := netlink.LinkByName("eth0p")
	if err == nil {
		err = netlink.LinkSetUp(peer)
	}
	var conn *packet.Conn
	if err == nil {
		conn, err = packet.Listen(&net.Interface{Index: peer.Attrs().Index, Name: "eth0p"}, packet.Datagram, unix.ETH_P_ARP, nil)
	}
	netns.Set(host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	a, err := Resolve("eth0")
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr("10.51.0.101")
	if err := (Installer{Adapter: a}).Add(vip, 24, 0); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no gratuitous ARP for %s on the LAN: %v", vip, err)
		}
		p, err := arp.Parse(buf[:n])
		if err != nil || p.SenderIP != vip || p.TargetIP != vip {
			continue
		}
		if net.HardwareAddr(p.SenderHW[:]).String() != eth.Attrs().HardwareAddr.String() {
			t.Fatalf("announcement of %s names MAC %x, want eth0's %s", vip, p.SenderHW, eth.Attrs().HardwareAddr)
		}
		break
	}
	// A renewal refreshing the lifetime announces nothing: the address has
	// not moved.
	if err := (Installer{Adapter: a}).Add(vip, 24, time.Hour); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			return // nothing more: right
		}
		if p, err := arp.Parse(buf[:n]); err == nil && p.SenderIP == vip && p.TargetIP == vip {
			t.Fatalf("refreshing %s announced it again", vip)
		}
	}
}
