package dhcp

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/ipvirt/ipvirt/internal/arp"
)

// conflicts reports whether p, seen while probing for ip, shows another
// host using or claiming ip (RFC 5227 2.1.1). Our own MAC is not another
// host: every VIP of this adapter answers ARP with it.
func conflicts(p arp.Packet, ip netip.Addr, ours net.HardwareAddr) bool {
	if bytes.Equal(p.SenderHW[:], ours) {
		return false
	}
	if p.SenderIP == ip {
		return true
	}
	return p.Op == arp.Request && p.SenderIP.IsUnspecified() && p.TargetIP == ip // a simultaneous probe
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
		a, err := arp.Parse(buf[:n])
		if err != nil {
			continue
		}
		p.mu.Lock()
		for ip, waiters := range p.probing {
			if conflicts(a, ip, p.mac) {
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

	probe := arp.Packet{Op: arp.Request, SenderHW: [6]byte(p.mac), SenderIP: netip.IPv4Unspecified(), TargetIP: ip}
	const probes = 3 // RFC 5227 PROBE_NUM
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(wait / probes)
	defer tick.Stop()
	sent := 0
	for {
		if sent < probes {
			if _, err := p.conn.WriteTo(probe.Marshal(), &packet.Addr{HardwareAddr: broadcastMAC}); err != nil {
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
	a := arp.Packet{Op: arp.Request, SenderHW: [6]byte(p.mac), SenderIP: ip, TargetIP: ip}
	_, _ = p.conn.WriteTo(a.Marshal(), &packet.Addr{HardwareAddr: broadcastMAC})
}

func (p *arpProber) close() error {
	p.closed.Store(true)
	err := p.conn.Close()
	p.wg.Wait()
	return err
}
