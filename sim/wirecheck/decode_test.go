package wirecheck

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

var (
	macA  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	macB  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	bcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	t0    = time.Date(2026, 1, 2, 12, 0, 1, 234567000, time.UTC)
)

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func eth(src, dst net.HardwareAddr, typ layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: typ}
}

func ip4(src, dst string, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto,
		SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4()}
}

func tcpFrame(t testing.TB, src, dst string, sport, dport uint16, syn, ack bool) []byte {
	ip := ip4(src, dst, layers.IPProtocolTCP)
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: syn, ACK: ack, Window: 1024}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, eth(macA, macB, layers.EthernetTypeIPv4), ip, tcp)
}

func tcp6SYN(t testing.TB) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
		SrcIP: net.ParseIP("fd00::1"), DstIP: net.ParseIP("fd00::2")}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 22, SYN: true, Window: 1024}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, eth(macA, macB, layers.EthernetTypeIPv6), ip, tcp)
}

func arpFrame(t testing.TB, op uint16, senderMAC net.HardwareAddr, sender, target string) []byte {
	dst := bcast
	if op == layers.ARPReply {
		dst = macB
	}
	a := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: op,
		SourceHwAddress: senderMAC, SourceProtAddress: net.ParseIP(sender).To4(),
		DstHwAddress: make([]byte, 6), DstProtAddress: net.ParseIP(target).To4()}
	return serialize(t, eth(macA, dst, layers.EthernetTypeARP), a)
}

func udpFrame(t testing.TB) []byte {
	ip := ip4("10.0.0.1", "10.0.0.2", layers.IPProtocolUDP)
	udp := &layers.UDP{SrcPort: 5000, DstPort: 53}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, eth(macA, macB, layers.EthernetTypeIPv4), ip, udp, gopacket.Payload([]byte("hello")))
}

func dhcpFrame(t testing.TB, src, dst string, sport, dport uint16, d *layers.DHCPv4) []byte {
	ip := ip4(src, dst, layers.IPProtocolUDP)
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, eth(macA, bcast, layers.EthernetTypeIPv4), ip, udp, d)
}

func dhcpLayer(op layers.DHCPOp, xid uint32, yiaddr string, opts ...layers.DHCPOption) *layers.DHCPv4 {
	return &layers.DHCPv4{Operation: op, HardwareType: layers.LinkTypeEthernet, Xid: xid,
		ClientIP: net.IPv4zero, YourClientIP: net.ParseIP(yiaddr), NextServerIP: net.IPv4zero,
		RelayAgentIP: net.IPv4zero, ClientHWAddr: macA, Options: opts}
}

// udpPayload is where the DHCP message starts in the frames built here
// (Ethernet, IPv4 without options, UDP).
const udpPayload = 14 + 20 + 8

// withHlen returns a copy of a DHCP frame with the chaddr length byte set;
// the UDP checksum goes stale, which the decoders do not check.
func withHlen(frame []byte, hlen byte) []byte {
	f := append([]byte(nil), frame...)
	f[udpPayload+2] = hlen
	return f
}

func msgType(t layers.DHCPMsgType) layers.DHCPOption {
	return layers.NewDHCPOption(layers.DHCPOptMessageType, []byte{byte(t)})
}

func optIP(o layers.DHCPOpt, ip string) layers.DHCPOption {
	return layers.NewDHCPOption(o, net.ParseIP(ip).To4())
}

func frame(at time.Time, data []byte) Frame { return Frame{At: at, Ifindex: 3, Data: data} }

func TestSYNs(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want []SYN
	}{
		{"syn", tcpFrame(t, "10.77.0.101", "10.77.0.3", 40022, 5432, true, false), []SYN{{At: t0,
			Src: netip.MustParseAddrPort("10.77.0.101:40022"), Dst: netip.MustParseAddrPort("10.77.0.3:5432"), SrcMAC: macA}}},
		{"syn-ack is an answer, not an attempt", tcpFrame(t, "10.77.0.3", "10.77.0.101", 5432, 40022, true, true), nil},
		{"ack", tcpFrame(t, "10.77.0.101", "10.77.0.3", 40022, 5432, false, true), nil},
		{"ipv6 syn", tcp6SYN(t), []SYN{{At: t0,
			Src: netip.MustParseAddrPort("[fd00::1]:40000"), Dst: netip.MustParseAddrPort("[fd00::2]:22"), SrcMAC: macA}}},
		{"arp", arpFrame(t, layers.ARPRequest, macA, "10.77.0.1", "10.77.0.2"), nil},
		{"garbage", []byte{1, 2, 3}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := SYNs([]Frame{frame(t0, tc.data)})
			if len(got) != len(tc.want) {
				t.Fatalf("SYNs = %+v, want %+v", got, tc.want)
			}
			for i := range got {
				g, w := got[i], tc.want[i]
				if !g.At.Equal(w.At) || g.Src != w.Src || g.Dst != w.Dst || !bytes.Equal(g.SrcMAC, w.SrcMAC) {
					t.Errorf("SYN %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

func TestARPs(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want []ARP
	}{
		{"request", arpFrame(t, layers.ARPRequest, macA, "10.77.0.1", "10.77.0.2"), []ARP{{At: t0, Reply: false,
			SenderMAC: macA, SenderIP: netip.MustParseAddr("10.77.0.1"), TargetIP: netip.MustParseAddr("10.77.0.2"), EthSrc: macA}}},
		{"reply from another MAC than the frame's", arpFrame(t, layers.ARPReply, macB, "10.77.0.2", "10.77.0.1"), []ARP{{At: t0, Reply: true,
			SenderMAC: macB, SenderIP: netip.MustParseAddr("10.77.0.2"), TargetIP: netip.MustParseAddr("10.77.0.1"), EthSrc: macA}}},
		{"tcp", tcpFrame(t, "10.77.0.101", "10.77.0.3", 1, 2, true, false), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ARPs([]Frame{frame(t0, tc.data)})
			if len(got) != len(tc.want) {
				t.Fatalf("ARPs = %+v, want %+v", got, tc.want)
			}
			for i := range got {
				g, w := got[i], tc.want[i]
				if !g.At.Equal(w.At) || g.Reply != w.Reply || !bytes.Equal(g.SenderMAC, w.SenderMAC) ||
					g.SenderIP != w.SenderIP || g.TargetIP != w.TargetIP || !bytes.Equal(g.EthSrc, w.EthSrc) {
					t.Errorf("ARP %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

func TestDHCP(t *testing.T) {
	request := dhcpFrame(t, "0.0.0.0", "255.255.255.255", 68, 67, dhcpLayer(layers.DHCPOpRequest, 0x1234, "0.0.0.0",
		msgType(layers.DHCPMsgTypeRequest),
		layers.NewDHCPOption(layers.DHCPOptClientID, []byte{0xff, 0x01, 0x02}),
		optIP(layers.DHCPOptRequestIP, "10.77.0.101"),
		optIP(layers.DHCPOptServerID, "10.77.0.1")))
	ack := dhcpFrame(t, "10.77.0.1", "10.77.0.101", 67, 68, dhcpLayer(layers.DHCPOpReply, 0x1234, "10.77.0.101",
		msgType(layers.DHCPMsgTypeAck), optIP(layers.DHCPOptServerID, "10.77.0.1")))
	bootp := dhcpFrame(t, "0.0.0.0", "255.255.255.255", 68, 67, dhcpLayer(layers.DHCPOpRequest, 7, "0.0.0.0"))
	odd := dhcpFrame(t, "0.0.0.0", "255.255.255.255", 68, 67, dhcpLayer(layers.DHCPOpRequest, 8, "0.0.0.0", msgType(42)))

	for _, tc := range []struct {
		name string
		data []byte
		want []DHCPMsg
	}{
		{"request", request, []DHCPMsg{{Type: "REQUEST", XID: 0x1234, ClientID: []byte{0xff, 1, 2},
			RequestedIP: netip.MustParseAddr("10.77.0.101"), ServerID: netip.MustParseAddr("10.77.0.1"),
			Src: netip.MustParseAddrPort("0.0.0.0:68"), Dst: netip.MustParseAddrPort("255.255.255.255:67")}}},
		{"ack", ack, []DHCPMsg{{Type: "ACK", XID: 0x1234, YourIP: netip.MustParseAddr("10.77.0.101"),
			ServerID: netip.MustParseAddr("10.77.0.1"), Src: netip.MustParseAddrPort("10.77.0.1:67"),
			Dst: netip.MustParseAddrPort("10.77.0.101:68")}}},
		{"bootp", bootp, []DHCPMsg{{Type: "", XID: 7,
			Src: netip.MustParseAddrPort("0.0.0.0:68"), Dst: netip.MustParseAddrPort("255.255.255.255:67")}}},
		{"unknown type", odd, []DHCPMsg{{Type: "TYPE42", XID: 8,
			Src: netip.MustParseAddrPort("0.0.0.0:68"), Dst: netip.MustParseAddrPort("255.255.255.255:67")}}},
		{"plain udp is not dhcp", udpFrame(t), nil},
		{"truncated", request[:len(request)-60], nil},
		// gopacket slices chaddr by the length byte: past the end of a short
		// message it panics (and must be recovered), inside a long one it
		// runs into sname and must be cut back to the 16-byte field.
		{"hlen past the message", withHlen(bootp[:udpPayload+240], 255), nil},
		{"hlen past chaddr", withHlen(bootp, 20), []DHCPMsg{{Type: "", XID: 7,
			Src: netip.MustParseAddrPort("0.0.0.0:68"), Dst: netip.MustParseAddrPort("255.255.255.255:67")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := DHCP([]Frame{frame(t0, tc.data)})
			if len(got) != len(tc.want) {
				t.Fatalf("DHCP = %+v, want %+v", got, tc.want)
			}
			for i := range got {
				g, w := got[i], tc.want[i]
				if !g.At.Equal(t0) || g.Type != w.Type || g.XID != w.XID || !bytes.Equal(g.ClientID, w.ClientID) ||
					(g.ClientID == nil) != (w.ClientID == nil) ||
					!bytes.Equal(g.ClientHW[:6], macA) || len(g.ClientHW) > 16 || !bytes.Equal(g.SrcMAC, macA) ||
					g.ClientIP != w.ClientIP || g.YourIP != w.YourIP || g.RequestedIP != w.RequestedIP ||
					g.ServerID != w.ServerID || g.Src != w.Src || g.Dst != w.Dst {
					t.Errorf("DHCP %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

func TestUsesOf(t *testing.T) {
	t1 := t0.Add(time.Second)
	frames := []Frame{
		frame(t0, tcpFrame(t, "10.77.0.101", "10.77.0.3", 40022, 5432, true, false)),
		frame(t0, arpFrame(t, layers.ARPRequest, macA, "10.77.0.3", "10.77.0.101")),
		frame(t1, arpFrame(t, layers.ARPReply, macA, "10.77.0.101", "10.77.0.3")),
		// A probe asks whether the address is free; it does not use it.
		frame(t1, arpFrame(t, layers.ARPRequest, macA, "0.0.0.0", "10.77.0.101")),
		frame(t1, tcpFrame(t, "10.77.0.3", "10.77.0.101", 5432, 40022, true, true)),
		frame(t1, []byte("not a frame")),
	}
	for _, tc := range []struct {
		name  string
		addr  string
		after time.Time
		want  []int
	}{
		{"ip source and arp sender", "10.77.0.101", time.Time{}, []int{0, 2}},
		{"only after", "10.77.0.101", t0, []int{2}},
		{"arp sender only before", "10.77.0.3", t0, []int{4}},
		{"destination is not a use", "10.77.0.200", time.Time{}, nil},
		{"mapped form", "::ffff:10.77.0.101", time.Time{}, []int{0, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := UsesOf(frames, netip.MustParseAddr(tc.addr), tc.after)
			if len(got) != len(tc.want) {
				t.Fatalf("UsesOf = %d frames, want %v", len(got), tc.want)
			}
			for i, j := range tc.want {
				if !bytes.Equal(got[i].Data, frames[j].Data) || !got[i].At.Equal(frames[j].At) {
					t.Errorf("use %d = %s, want %s", i, Describe(got[i]), Describe(frames[j]))
				}
			}
		})
	}
}

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want []string
	}{
		{"syn", tcpFrame(t, "10.77.0.101", "10.77.0.3", 40022, 5432, true, false),
			[]string{"12:00:01.234567", "if3", "TCP 10.77.0.101:40022 > 10.77.0.3:5432 [SYN]", "eth 02:00:00:00:00:01 > 02:00:00:00:00:02"}},
		{"dhcp", dhcpFrame(t, "0.0.0.0", "255.255.255.255", 68, 67, dhcpLayer(layers.DHCPOpRequest, 0x1234, "0.0.0.0",
			msgType(layers.DHCPMsgTypeRequest), layers.NewDHCPOption(layers.DHCPOptClientID, []byte{0xff, 0x01}),
			optIP(layers.DHCPOptRequestIP, "10.77.0.101"))),
			[]string{"DHCP REQUEST xid=0x1234 client-id=ff01", "requested=10.77.0.101", "0.0.0.0:68 > 255.255.255.255:67"}},
		{"arp reply", arpFrame(t, layers.ARPReply, macA, "10.77.0.101", "10.77.0.3"),
			[]string{"ARP reply 10.77.0.101 is-at 02:00:00:00:00:01"}},
		{"arp request", arpFrame(t, layers.ARPRequest, macA, "10.77.0.3", "10.77.0.101"),
			[]string{"ARP request who-has 10.77.0.101 tell 10.77.0.3"}},
		{"udp", udpFrame(t),
			[]string{"UDP 10.0.0.1:5000 > 10.0.0.2:53 len 5"}},
		{"other ethertype", serialize(t, eth(macA, macB, layers.EthernetType(0x88cc)), gopacket.Payload(make([]byte, 46))),
			[]string{"0x88cc"}},
		{"short", []byte{1, 2, 3}, []string{"undecodable frame (3 bytes) 010203"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Describe(frame(t0, tc.data))
			if strings.Contains(got, "\n") {
				t.Errorf("Describe spans lines: %q", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("Describe = %q, want it to contain %q", got, w)
				}
			}
		})
	}
}

func TestStartOpenError(t *testing.T) {
	boom := errors.New("no such namespace")
	if _, err := Start(func(func() error) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Start with a failing open = %v, want it to wrap %v", err, boom)
	}
	if _, err := Start(func(func() error) error { return nil }); err == nil {
		t.Error("Start with an open that never runs fn succeeded")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(tcpFrame(f, "10.77.0.101", "10.77.0.3", 40022, 5432, true, false))
	f.Add(tcp6SYN(f))
	f.Add(arpFrame(f, layers.ARPReply, macA, "10.77.0.101", "10.77.0.3"))
	f.Add(dhcpFrame(f, "0.0.0.0", "255.255.255.255", 68, 67, dhcpLayer(layers.DHCPOpRequest, 1, "0.0.0.0",
		msgType(layers.DHCPMsgTypeDiscover), layers.NewDHCPOption(layers.DHCPOptClientID, []byte{0xff}))))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		frames := []Frame{{At: t0, Ifindex: 1, Data: data}}
		SYNs(frames)
		ARPs(frames)
		DHCP(frames)
		UsesOf(frames, netip.MustParseAddr("10.77.0.101"), time.Time{})
		if Describe(frames[0]) == "" {
			t.Error("Describe returned an empty line")
		}
	})
}
