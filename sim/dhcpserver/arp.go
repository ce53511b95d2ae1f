package dhcpserver

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// RogueMAC is the hardware address the rogue host claims ARPInUse
// addresses with.
var RogueMAC = net.HardwareAddr{0x02, 0x0b, 0xad, 0x00, 0x00, 0x01}

// arpPacket is an Ethernet/IPv4 ARP payload (RFC 826).
type arpPacket struct {
	op       uint16
	sha, tha net.HardwareAddr
	spa, tpa netip.Addr
}

const (
	arpRequest = 1
	arpReply   = 2
	arpLen     = 28
)

func parseARP(b []byte) (arpPacket, bool) {
	if len(b) < arpLen || binary.BigEndian.Uint16(b[0:2]) != 1 || binary.BigEndian.Uint16(b[2:4]) != unix.ETH_P_IP ||
		b[4] != 6 || b[5] != 4 {
		return arpPacket{}, false
	}
	return arpPacket{
		op:  binary.BigEndian.Uint16(b[6:8]),
		sha: net.HardwareAddr(b[8:14]),
		spa: netip.AddrFrom4([4]byte(b[14:18])),
		tha: net.HardwareAddr(b[18:24]),
		tpa: netip.AddrFrom4([4]byte(b[24:28])),
	}, true
}

func (p arpPacket) marshal() []byte {
	b := make([]byte, arpLen)
	binary.BigEndian.PutUint16(b[0:2], 1)
	binary.BigEndian.PutUint16(b[2:4], unix.ETH_P_IP)
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:8], p.op)
	copy(b[8:14], p.sha)
	s4, t4 := p.spa.As4(), p.tpa.As4()
	copy(b[14:18], s4[:])
	copy(b[18:24], p.tha)
	copy(b[24:28], t4[:])
	return b
}

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
		req, ok := parseARP(buf[:n])
		if !ok || req.op != arpRequest {
			continue
		}
		r.mu.Lock()
		claimed := r.claims[req.tpa]
		r.mu.Unlock()
		if !claimed {
			continue
		}
		// RFC 5227 2.4: a defending host answers a probe (spa 0.0.0.0)
		// with an ordinary reply; the prober sees its address taken.
		reply := arpPacket{op: arpReply, sha: RogueMAC, spa: req.tpa, tha: req.sha, tpa: req.spa}
		dst := append(net.HardwareAddr(nil), req.sha...)
		if _, err := r.conn.WriteTo(reply.marshal(), &packet.Addr{HardwareAddr: dst}); err == nil {
			r.counted()
		}
	}
}

func (r *rogueARP) close() {
	r.conn.Close()
	r.wg.Wait()
}
