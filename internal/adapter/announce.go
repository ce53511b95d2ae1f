package adapter

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/ipvirt/ipvirt/internal/arp"
)

// announceGap is RFC 5227 2.3's ANNOUNCE_INTERVAL between the two
// announcements.
const announceGap = 2 * time.Second

// announce tells the LAN that vip is now at this adapter's MAC with two
// gratuitous ARPs (RFC 5227 2.3's announcement), the second in the
// background. An address can come from another host: a farm's VIP that a
// fenced host gave up (source: etcd), a DHCP address another client held
// before. Neighbours that cached it at the other host's MAC would send
// their replies there until the cache entry expired: a database server
// answered a farm host's SYNs at the old host's MAC for 20 s.
func (in Installer) announce(vip netip.Addr) error {
	if len(in.Adapter.MAC) != 6 || !vip.Is4() {
		return nil // no ARP on this link (tun, loopback)
	}
	send := func() error {
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
	if err := send(); err != nil {
		return err
	}
	time.AfterFunc(announceGap, func() { _ = send() })
	return nil
}
