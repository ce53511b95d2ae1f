package wirecheck

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// SYN is a TCP SYN (without ACK) seen on the wire: the attempt to connect,
// which is what a check needs even when no connection results.
type SYN struct {
	At       time.Time
	Src, Dst netip.AddrPort
	SrcMAC   net.HardwareAddr
}

// DHCPMsg is one DHCPv4 message (UDP 67/68).
type DHCPMsg struct {
	At time.Time
	// Type is "DISCOVER", "OFFER", "REQUEST", "ACK", "NAK", "RELEASE",
	// "DECLINE" or "INFORM"; "" for plain BOOTP (no option 53) and
	// "TYPE<n>" for a value outside RFC 2131, so odd traffic still shows.
	Type     string
	XID      uint32
	ClientID []byte // option 61, nil if absent
	ClientHW net.HardwareAddr
	// ciaddr, yiaddr, option 50 and option 54; the zero Addr when absent
	// or 0.0.0.0, so IsValid tells whether the field was really set.
	ClientIP, YourIP, RequestedIP, ServerID netip.Addr
	SrcMAC                                  net.HardwareAddr
	Src, Dst                                netip.AddrPort
}

// ARP is one ARP packet.
type ARP struct {
	At        time.Time
	Reply     bool
	SenderMAC net.HardwareAddr
	SenderIP  netip.Addr
	TargetIP  netip.Addr
	// EthSrc can differ from SenderMAC (proxy ARP, spoofing), which is
	// why both are kept.
	EthSrc net.HardwareAddr
}

// packet decodes a frame. gopacket recovers from panics in its decoders
// (some trust length fields), which matters because frames come from
// programs under test, not from a well-behaved stack.
func packet(f Frame) gopacket.Packet {
	return gopacket.NewPacket(f.Data, layers.LayerTypeEthernet, gopacket.DecodeOptions{NoCopy: true})
}

func ethernet(p gopacket.Packet) *layers.Ethernet {
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	return eth
}

// ipSrcDst returns the network addresses of an IPv4 or IPv6 packet.
func ipSrcDst(p gopacket.Packet) (src, dst netip.Addr, ok bool) {
	if ip4, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ip4 != nil {
		src, ok1 := netip.AddrFromSlice(ip4.SrcIP.To4())
		dst, ok2 := netip.AddrFromSlice(ip4.DstIP.To4())
		return src, dst, ok1 && ok2
	}
	if ip6, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ip6 != nil {
		src, ok1 := netip.AddrFromSlice(ip6.SrcIP.To16())
		dst, ok2 := netip.AddrFromSlice(ip6.DstIP.To16())
		return src, dst, ok1 && ok2
	}
	return netip.Addr{}, netip.Addr{}, false
}

// collect decodes every frame with decode and keeps what it recognises.
func collect[T any](frames []Frame, decode func(Frame, gopacket.Packet) (T, bool)) []T {
	var out []T
	for _, f := range frames {
		if v, ok := decode(f, packet(f)); ok {
			out = append(out, v)
		}
	}
	return out
}

// SYNs lists the TCP connection attempts in frames, over IPv4 and IPv6.
func SYNs(frames []Frame) []SYN { return collect(frames, decodeSYN) }

func decodeSYN(f Frame, p gopacket.Packet) (SYN, bool) {
	eth := ethernet(p)
	tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if eth == nil || tcp == nil || !tcp.SYN || tcp.ACK {
		return SYN{}, false
	}
	src, dst, ok := ipSrcDst(p)
	if !ok {
		return SYN{}, false
	}
	return SYN{
		At:     f.At,
		Src:    netip.AddrPortFrom(src, uint16(tcp.SrcPort)),
		Dst:    netip.AddrPortFrom(dst, uint16(tcp.DstPort)),
		SrcMAC: cloneMAC(eth.SrcMAC),
	}, true
}

// DHCP lists the DHCPv4 messages in frames.
func DHCP(frames []Frame) []DHCPMsg { return collect(frames, decodeDHCP) }

var dhcpTypes = map[layers.DHCPMsgType]string{
	layers.DHCPMsgTypeDiscover: "DISCOVER",
	layers.DHCPMsgTypeOffer:    "OFFER",
	layers.DHCPMsgTypeRequest:  "REQUEST",
	layers.DHCPMsgTypeDecline:  "DECLINE",
	layers.DHCPMsgTypeAck:      "ACK",
	layers.DHCPMsgTypeNak:      "NAK",
	layers.DHCPMsgTypeRelease:  "RELEASE",
	layers.DHCPMsgTypeInform:   "INFORM",
}

func decodeDHCP(f Frame, p gopacket.Packet) (DHCPMsg, bool) {
	eth := ethernet(p)
	ip4, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	d, _ := p.Layer(layers.LayerTypeDHCPv4).(*layers.DHCPv4)
	if eth == nil || ip4 == nil || udp == nil || d == nil {
		return DHCPMsg{}, false
	}
	src, _ := netip.AddrFromSlice(ip4.SrcIP.To4())
	dst, _ := netip.AddrFromSlice(ip4.DstIP.To4())
	m := DHCPMsg{
		At:       f.At,
		XID:      d.Xid,
		ClientHW: cloneMAC(d.ClientHWAddr),
		ClientIP: addr4(d.ClientIP),
		YourIP:   addr4(d.YourClientIP),
		SrcMAC:   cloneMAC(eth.SrcMAC),
		Src:      netip.AddrPortFrom(src, uint16(udp.SrcPort)),
		Dst:      netip.AddrPortFrom(dst, uint16(udp.DstPort)),
	}
	// chaddr is a 16-byte field; gopacket slices it by the length byte,
	// which a malformed message can set past the field.
	if len(m.ClientHW) > 16 {
		m.ClientHW = m.ClientHW[:16]
	}
	for _, o := range d.Options {
		switch o.Type {
		case layers.DHCPOptMessageType:
			if len(o.Data) == 1 {
				t, ok := dhcpTypes[layers.DHCPMsgType(o.Data[0])]
				if !ok {
					t = fmt.Sprintf("TYPE%d", o.Data[0])
				}
				m.Type = t
			}
		case layers.DHCPOptClientID:
			m.ClientID = append([]byte{}, o.Data...)
		case layers.DHCPOptRequestIP:
			m.RequestedIP = addr4(o.Data)
		case layers.DHCPOptServerID:
			m.ServerID = addr4(o.Data)
		}
	}
	return m, true
}

// addr4 returns the zero Addr for anything but a set IPv4 address, so callers
// test IsValid instead of comparing with 0.0.0.0.
func addr4(b []byte) netip.Addr {
	if len(b) == 16 {
		b = net.IP(b).To4()
	}
	a, ok := netip.AddrFromSlice(b)
	if !ok || !a.Is4() || a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

// ARPs lists the IPv4-over-Ethernet ARP requests and replies in frames.
func ARPs(frames []Frame) []ARP { return collect(frames, decodeARP) }

func decodeARP(f Frame, p gopacket.Packet) (ARP, bool) {
	eth := ethernet(p)
	arp, _ := p.Layer(layers.LayerTypeARP).(*layers.ARP)
	if eth == nil || arp == nil || arp.Protocol != layers.EthernetTypeIPv4 ||
		len(arp.SourceHwAddress) != 6 || len(arp.SourceProtAddress) != 4 || len(arp.DstProtAddress) != 4 ||
		(arp.Operation != layers.ARPRequest && arp.Operation != layers.ARPReply) {
		return ARP{}, false
	}
	sender, _ := netip.AddrFromSlice(arp.SourceProtAddress)
	target, _ := netip.AddrFromSlice(arp.DstProtAddress)
	return ARP{
		At:        f.At,
		Reply:     arp.Operation == layers.ARPReply,
		SenderMAC: cloneMAC(arp.SourceHwAddress),
		SenderIP:  sender,
		TargetIP:  target,
		EthSrc:    cloneMAC(eth.SrcMAC),
	}, true
}

// UsesOf lists frames after t in which addr is used as a source: an IP packet
// with source addr, or an ARP packet (request or reply) whose sender IP is
// addr. It is how a check proves that a host kept using an address it no
// longer holds; Describe renders each for an error message. ARP probes
// (sender 0.0.0.0) are not uses, since they only ask whether addr is taken.
func UsesOf(frames []Frame, addr netip.Addr, after time.Time) []Frame {
	addr = addr.Unmap()
	var out []Frame
	for _, f := range frames {
		if !f.At.After(after) {
			continue
		}
		p := packet(f)
		if a, ok := decodeARP(f, p); ok {
			if a.SenderIP == addr {
				out = append(out, f)
			}
			continue
		}
		if src, _, ok := ipSrcDst(p); ok && src == addr {
			out = append(out, f)
		}
	}
	return out
}

// cloneMAC copies so that results do not alias the captured frames, which
// callers may keep and compare long after.
func cloneMAC(b []byte) net.HardwareAddr {
	if b == nil {
		return nil
	}
	return append(net.HardwareAddr{}, b...)
}

// Use is one frame using an address as its source: an IP packet from it,
// or an ARP packet with it as sender (not a probe, whose sender is 0.0.0.0).
type Use struct {
	At     time.Time
	Addr   netip.Addr
	EthSrc net.HardwareAddr
}

// Uses lists every use of a source address in frames, in frame order: with
// the ethernet source it tells which host used which address when.
func Uses(frames []Frame) []Use {
	return collect(frames, func(f Frame, p gopacket.Packet) (Use, bool) {
		if a, ok := decodeARP(f, p); ok {
			return Use{At: f.At, Addr: a.SenderIP, EthSrc: a.EthSrc}, a.SenderIP.IsValid() && !a.SenderIP.IsUnspecified()
		}
		eth := ethernet(p)
		if src, _, ok := ipSrcDst(p); ok && eth != nil && !src.IsUnspecified() {
			return Use{At: f.At, Addr: src.Unmap(), EthSrc: cloneMAC(eth.SrcMAC)}, true
		}
		return Use{}, false
	})
}
