package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

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

// parseARP decodes an ARP payload from the wire (untrusted).
func parseARP(b []byte) (arpPacket, bool) {
	if len(b) < arpLen || binary.BigEndian.Uint16(b[0:2]) != 1 || binary.BigEndian.Uint16(b[2:4]) != unix.ETH_P_IP ||
		b[4] != 6 || b[5] != 4 {
		return arpPacket{}, false
	}
	op := binary.BigEndian.Uint16(b[6:8])
	if op != arpRequest && op != arpReply {
		return arpPacket{}, false
	}
	return arpPacket{
		op:  op,
		sha: append(net.HardwareAddr(nil), b[8:14]...),
		spa: netip.AddrFrom4([4]byte(b[14:18])),
		tha: append(net.HardwareAddr(nil), b[18:24]...),
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
	if p.spa.Is4() {
		s := p.spa.As4()
		copy(b[14:18], s[:])
	}
	copy(b[18:24], p.tha)
	if p.tpa.Is4() {
		t := p.tpa.As4()
		copy(b[24:28], t[:])
	}
	return b
}

// conflicts reports whether p, seen while probing for ip, shows another
// host using or claiming ip (RFC 5227 2.1.1). Our own MAC is not another
// host: every VIP of this adapter answers ARP with it.
func (p arpPacket) conflicts(ip netip.Addr, ours net.HardwareAddr) bool {
	if bytes.Equal(p.sha, ours) {
		return false
	}
	if p.spa == ip {
		return true
	}
	return p.op == arpRequest && p.spa.IsUnspecified() && p.tpa == ip // a simultaneous probe
}

// arpProber runs RFC 5227 probes on the adapter.
type arpProber struct {
	conn   *packet.Conn
	mac    net.HardwareAddr
	closed atomic.Bool
	wg     sync.WaitGroup

	mu      sync.Mutex
	probing map[netip.Addr][]chan struct{}
}

func newARPProber(ifc Interface, mac net.HardwareAddr) (*arpProber, error) {
	ifi := &net.Interface{Index: ifc.Index, Name: ifc.Name, HardwareAddr: mac}
	conn, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_ARP, nil)
	if err != nil {
		return nil, fmt.Errorf("dhcp: arp socket on %s: %w", ifc.Name, err)
	}
	tuneSocket(conn)
	p := &arpProber{conn: conn, mac: mac, probing: map[netip.Addr][]chan struct{}{}}
	p.wg.Add(1)
	go p.readLoop()
	return p, nil
}

func (p *arpProber) readLoop() {
	defer p.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, _, err := p.conn.ReadFrom(buf)
		if err != nil {
			if p.closed.Load() {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		a, ok := parseARP(buf[:n])
		if !ok {
			continue
		}
		p.mu.Lock()
		for ip, waiters := range p.probing {
			if a.conflicts(ip, p.mac) {
				for _, w := range waiters {
					select {
					case w <- struct{}{}:
					default:
					}
				}
			}
		}
		p.mu.Unlock()
	}
}

// probe sends three ARP probes for ip spread over wait and reports whether
// anyone else answered for or claimed ip meanwhile.
func (p *arpProber) probe(ctx context.Context, ip netip.Addr, wait time.Duration) (bool, error) {
	hit := make(chan struct{}, 1)
	p.mu.Lock()
	p.probing[ip] = append(p.probing[ip], hit)
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		ws := p.probing[ip]
		for i, w := range ws {
			if w == hit {
				ws = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(ws) == 0 {
			delete(p.probing, ip)
		} else {
			p.probing[ip] = ws
		}
		p.mu.Unlock()
	}()

	probe := arpPacket{op: arpRequest, sha: p.mac, spa: netip.IPv4Unspecified(), tha: make(net.HardwareAddr, 6), tpa: ip}
	const probes = 3 // RFC 5227 PROBE_NUM
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(wait / probes)
	defer tick.Stop()
	sent := 0
	for {
		if sent < probes {
			if _, err := p.conn.WriteTo(probe.marshal(), &packet.Addr{HardwareAddr: broadcastMAC}); err != nil {
				return false, fmt.Errorf("dhcp: arp probe %s: %w", ip, err)
			}
			sent++
		}
		select {
		case <-hit:
			return true, nil
		case <-deadline.C:
			return false, nil
		case <-ctx.Done():
			return false, ctx.Err()
		case <-tick.C:
		}
	}
}

// announce sends one gratuitous ARP for ip (RFC 5227 2.3) so neighbours
// drop stale cache entries from the address's previous holder.
func (p *arpProber) announce(ip netip.Addr) {
	a := arpPacket{op: arpRequest, sha: p.mac, spa: ip, tha: make(net.HardwareAddr, 6), tpa: ip}
	_, _ = p.conn.WriteTo(a.marshal(), &packet.Addr{HardwareAddr: broadcastMAC})
}

func (p *arpProber) close() error {
	p.closed.Store(true)
	err := p.conn.Close()
	p.wg.Wait()
	return err
}
