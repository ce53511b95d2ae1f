package adapter

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/ipvirt/ipvirt/internal/arp"
)

// announce tells the LAN that vip is now at this adapter's MAC with a
// gratuitous ARP (RFC 5227 2.3's announcement; its second one, 2 s later,
// is left out: the holder may have ended by then, and nothing may use a
// released address). An address can come from another host: a farm's VIP that a
// fenced host gave up (source: etcd), a DHCP address another client held
// before. Neighbours that cached it at the other host's MAC would send
// their replies there until the cache entry expired: a database server
// answered a farm host's SYNs at the old host's MAC for 20 s.
func (in Installer) announce(vip netip.Addr) error {
	if len(in.Adapter.MAC) != 6 || !vip.Is4() {
		return nil // no ARP on this link (tun, loopback)
	}
	ifi := &net.Interface{Index: in.Adapter.Index, Name: in.Adapter.Name, HardwareAddr: in.Adapter.MAC}
	conn, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_ARP, nil)
	if err != nil {
		return fmt.Errorf("adapter: announce %s: arp socket on %s: %w", vip, in.Adapter.Name, err)
	}
	defer conn.Close()
	p := arp.Packet{Op: arp.Request, SenderHW: [6]byte(in.Adapter.MAC), SenderIP: vip, TargetIP: vip}
	if _, err := conn.WriteTo(p.Marshal(), &packet.Addr{HardwareAddr: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}); err != nil {
		return fmt.Errorf("adapter: announce %s on %s: %w", vip, in.Adapter.Name, err)
	}
	return nil
}
