package wirecheck

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Describe renders a frame in one line for failure messages, e.g.
//
//	12:00:01.234567 if3 TCP 10.77.0.101:40022 > 10.77.0.3:5432 [SYN] eth 02:00:00:00:00:01 > 02:00:00:00:00:03
//	12:00:01.300000 if3 DHCP REQUEST xid=0x1234 client-id=ff01 requested=10.77.0.101 udp 0.0.0.0:68 > 255.255.255.255:67 eth ...
//	12:00:01.400000 if4 ARP reply 10.77.0.101 is-at 02:00:00:00:00:01 eth ...
//
// The interface index is included because on a bridge it names the port,
// and so the host, that sent the frame.
func Describe(f Frame) string {
	var b strings.Builder
	b.WriteString(f.At.Format("15:04:05.000000"))
	fmt.Fprintf(&b, " if%d ", f.Ifindex)
	p := packet(f)
	eth := ethernet(p)
	if eth == nil {
		fmt.Fprintf(&b, "undecodable frame (%d bytes) %s", len(f.Data), hexPrefix(f.Data))
		return b.String()
	}
	b.WriteString(body(f, p, eth))
	fmt.Fprintf(&b, " eth %s > %s", eth.SrcMAC, eth.DstMAC)
	return b.String()
}

func body(f Frame, p gopacket.Packet, eth *layers.Ethernet) string {
	if a, ok := decodeARP(f, p); ok {
		if a.Reply {
			return fmt.Sprintf("ARP reply %s is-at %s", a.SenderIP, a.SenderMAC)
		}
		return fmt.Sprintf("ARP request who-has %s tell %s (%s)", a.TargetIP, a.SenderIP, a.SenderMAC)
	}
	if m, ok := decodeDHCP(f, p); ok {
		return describeDHCP(m)
	}
	src, dst, ok := ipSrcDst(p)
	if !ok {
		return fmt.Sprintf("ethertype %s (0x%04x) len %d", eth.EthernetType, uint16(eth.EthernetType), len(f.Data))
	}
	if tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP); tcp != nil {
		return fmt.Sprintf("TCP %s > %s [%s] len %d",
			netip.AddrPortFrom(src, uint16(tcp.SrcPort)), netip.AddrPortFrom(dst, uint16(tcp.DstPort)),
			tcpFlags(tcp), len(tcp.Payload))
	}
	if udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP); udp != nil {
		return fmt.Sprintf("UDP %s > %s len %d",
			netip.AddrPortFrom(src, uint16(udp.SrcPort)), netip.AddrPortFrom(dst, uint16(udp.DstPort)), len(udp.Payload))
	}
	if icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); icmp != nil {
		return fmt.Sprintf("ICMP %s > %s %s", src, dst, icmp.TypeCode)
	}
	if icmp, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); icmp != nil {
		return fmt.Sprintf("ICMPv6 %s > %s %s", src, dst, icmp.TypeCode)
	}
	return fmt.Sprintf("IP %s > %s len %d", src, dst, len(f.Data))
}

func describeDHCP(m DHCPMsg) string {
	var b strings.Builder
	b.WriteString("DHCP ")
	if m.Type == "" {
		b.WriteString("BOOTP")
	} else {
		b.WriteString(m.Type)
	}
	fmt.Fprintf(&b, " xid=0x%x", m.XID)
	if m.ClientID != nil {
		fmt.Fprintf(&b, " client-id=%s", hex.EncodeToString(m.ClientID))
	}
	if len(m.ClientHW) > 0 {
		fmt.Fprintf(&b, " chaddr=%s", m.ClientHW)
	}
	for _, a := range []struct {
		name string
		addr netip.Addr
	}{
		{"ciaddr", m.ClientIP}, {"yiaddr", m.YourIP},
		{"requested", m.RequestedIP}, {"server-id", m.ServerID},
	} {
		if a.addr.IsValid() {
			fmt.Fprintf(&b, " %s=%s", a.name, a.addr)
		}
	}
	fmt.Fprintf(&b, " udp %s > %s", m.Src, m.Dst)
	return b.String()
}

func tcpFlags(t *layers.TCP) string {
	var fl []string
	for _, x := range []struct {
		set  bool
		name string
	}{
		{t.SYN, "SYN"}, {t.FIN, "FIN"}, {t.RST, "RST"}, {t.PSH, "PSH"},
		{t.ACK, "ACK"}, {t.URG, "URG"}, {t.ECE, "ECE"}, {t.CWR, "CWR"}, {t.NS, "NS"},
	} {
		if x.set {
			fl = append(fl, x.name)
		}
	}
	return strings.Join(fl, ",")
}

// hexPrefix shows the start of an undecodable frame, enough to recognise it
// without flooding a failure message.
func hexPrefix(b []byte) string {
	const max = 32
	if len(b) > max {
		return hex.EncodeToString(b[:max]) + "..."
	}
	return hex.EncodeToString(b)
}
