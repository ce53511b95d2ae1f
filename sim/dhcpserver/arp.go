package dhcpserver

import (
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/ipvirt/ipvirt/internal/arp"
)

// RogueMAC is the hardware address the rogue host claims ARPInUse
// addresses with.
var RogueMAC = net.HardwareAddr{0x02, 0x0b, 0xad, 0x00, 0x00, 0x01}

// rogueARP answers ARP requests for the addresses it claims, the way a
// host that already uses them (a misconfigured static address) would.
type rogueARP struct {
	conn    *packet.Conn
	counted func()
	mu      sync.Mutex
	claims  map[netip.Addr]bool
	wg      sync.WaitGroup
}

func startRogueARP(ifname string, addrs []netip.Addr, counted func()) (*rogueARP, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("dhcpserver: rogue arp: interface %q: %w", ifname, err)
	}
	conn, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_ARP, nil)
	if err != nil {
		return nil, fmt.Errorf("dhcpserver: rogue arp on %q: %w", ifname, err)
	}
	r := &rogueARP{conn: conn, counted: counted}
	r.set(addrs)
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

func (r *rogueARP) set(addrs []netip.Addr) {
	m := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		m[a] = true
	}
	r.mu.Lock()
	r.claims = m
	r.mu.Unlock()
}

func (r *rogueARP) serve() {
	defer r.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, _, err := r.conn.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		req, err := arp.Parse(buf[:n])
		if err != nil || req.Op != arp.Request {
			continue
		}
		r.mu.Lock()
		claimed := r.claims[req.TargetIP]
		r.mu.Unlock()
		if !claimed {
			continue
		}
		// RFC 5227 2.4: a defending host answers a probe (spa 0.0.0.0)
		// with an ordinary reply; the prober sees its address taken.
		reply := arp.Packet{Op: arp.Reply, SenderHW: [6]byte(RogueMAC), SenderIP: req.TargetIP,
			TargetHW: req.SenderHW, TargetIP: req.SenderIP}
		if _, err := r.conn.WriteTo(reply.Marshal(), &packet.Addr{HardwareAddr: req.SenderHW[:]}); err == nil {
			r.counted()
		}
	}
}

func (r *rogueARP) close() {
	r.conn.Close()
	r.wg.Wait()
}
