package check

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/ipvirt/ipvirt/sim/scenario/topo"
	"github.com/ipvirt/ipvirt/sim/wirecheck"
)

var (
	sessMAC  = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	otherMAC = net.HardwareAddr{2, 0, 0, 0, 0, 9}
	srvMAC   = net.HardwareAddr{2, 0, 0, 0, 0, 3}
)

type fixedTopo struct{ topo.Topology }

func (fixedTopo) ServerAddr() netip.Addr { return netip.MustParseAddr("10.77.0.3") }

func frame(t *testing.T, at time.Time, ls ...gopacket.SerializableLayer) wirecheck.Frame {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return wirecheck.Frame{At: at, Data: buf.Bytes()}
}

func syn(t *testing.T, mac net.HardwareAddr, src string, sport uint16) wirecheck.Frame {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP("10.77.0.3").To4()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: 5432, SYN: true, Window: 1000}
	tcp.SetNetworkLayerForChecksum(ip)
	return frame(t, time.Now(), &layers.Ethernet{SrcMAC: mac, DstMAC: srvMAC, EthernetType: layers.EthernetTypeIPv4}, ip, tcp)
}

func arpReply(t *testing.T, mac net.HardwareAddr, sender string) wirecheck.Frame {
	return frame(t, time.Now(), &layers.Ethernet{SrcMAC: mac, DstMAC: srvMAC, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPReply, SourceHwAddress: mac, SourceProtAddress: net.ParseIP(sender).To4(),
			DstHwAddress: srvMAC, DstProtAddress: net.ParseIP("10.77.0.3").To4()})
}

// The wire checks pass on what a correct run puts on the wire and fail,
// naming the packet, on what a broken one would.
func TestWireChecks(t *testing.T) {
	client := &ClientResult{Session: "user#1",
		Source: netip.MustParseAddrPort("10.77.0.100:40000"), VIP: netip.MustParseAddr("10.77.0.100")}
	report := []SessionRow{{Session: "a:1", VIP: "10.77.0.100"}}
	tests := []struct {
		name   string
		frames func(t *testing.T) []wirecheck.Frame
		check  func(w *wireRun) Outcome
		ok     bool
		want   string
	}{
		{"SYN from the VIP", func(t *testing.T) []wirecheck.Frame {
			return []wirecheck.Frame{syn(t, sessMAC, "10.77.0.100", 40000)}
		}, (*wireRun).synFromVIP, true, "1 checked"},
		{"SYN missing", func(t *testing.T) []wirecheck.Frame {
			return []wirecheck.Frame{syn(t, sessMAC, "10.77.0.100", 40001)}
		}, (*wireRun).synFromVIP, false, "no SYN from 10.77.0.100:40000"},
		{"SYN from another host", func(t *testing.T) []wirecheck.Frame {
			return []wirecheck.Frame{syn(t, otherMAC, "10.77.0.100", 40000)}
		}, (*wireRun).synFromVIP, false, "not the session host"},
		{"ARP from the session host", func(t *testing.T) []wirecheck.Frame {
			return []wirecheck.Frame{arpReply(t, sessMAC, "10.77.0.100")}
		}, (*wireRun).arpFromSession, true, "1 checked"},
		{"ARP for a VIP from another host", func(t *testing.T) []wirecheck.Frame {
			return []wirecheck.Frame{arpReply(t, sessMAC, "10.77.0.100"), arpReply(t, otherMAC, "10.77.0.100")}
		}, (*wireRun).arpFromSession, false, "02:00:00:00:00:09"},
		{"no REQUEST for the reported lease", func(t *testing.T) []wirecheck.Frame {
			return nil
		}, func(w *wireRun) Outcome {
			w.env.Report = []SessionRow{{Session: "a:1", VIP: "10.77.0.100", ClientID: "ff0102"}}
			return w.dhcpClientIDs()
		}, false, "no REQUEST for 10.77.0.100 with client-id ff0102"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := &Env{Topology: fixedTopo{}, Clients: []*ClientResult{client}, Report: report}
			w := &wireRun{env: env, frames: tt.frames(t), macs: []net.HardwareAddr{sessMAC}}
			o := tt.check(w)
			if o.OK != tt.ok || !strings.Contains(o.Got, tt.want) {
				t.Fatalf("got %+v, want ok=%v and %q", o, tt.ok, tt.want)
			}
		})
	}
}
