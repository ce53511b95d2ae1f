package dhcp

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// inbound is a server reply and the link-layer address it came from (the
// server's, or the router's if relayed; nil in relay mode).
type inbound struct {
	msg *dhcpv4.DHCPv4
	mac net.HardwareAddr
}

// dest says where a message goes. The zero dest means "all servers":
// broadcast on the adapter, or the configured server in relay mode.
type dest struct {
	server netip.Addr       // unicast to this server (RENEWING, RELEASE)
	mac    net.HardwareAddr // raw mode: its link-layer next hop, nil if unknown
	src    netip.Addr       // raw mode: IP source (the VIP once bound)
}

// transport moves DHCP messages. Replies go to the deliver func given at
// construction, from one goroutine.
type transport interface {
	send(m *dhcpv4.DHCPv4, to dest) error
	close() error
}

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// rawTransport talks DHCP on the adapter through an AF_PACKET socket: the
// client has no address for a VIP before it is bound, and must not fight
// the host's own DHCP client for UDP port 68.
type rawTransport struct {
	conn       *packet.Conn
	clientPort uint16
	serverPort uint16
	closed     atomic.Bool
	wg         sync.WaitGroup
}

// udpPortFilter accepts unfragmented IPv4 UDP to port (offsets are from
// the IP header: SOCK_DGRAM packet sockets filter on the network header),
// so a busy adapter does not copy every packet into the daemon.
func udpPortFilter(port uint16) ([]bpf.RawInstruction, error) {
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 9, Size: 1},                                // 0: protocol
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: protoUDP, SkipTrue: 6},   // 1
		bpf.LoadAbsolute{Off: 6, Size: 2},                                // 2: flags+fragment offset
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: 4},      // 3: not the first fragment
		bpf.LoadMemShift{Off: 0},                                         // 4: X = IP header length
		bpf.LoadIndirect{Off: 2, Size: 2},                                // 5: UDP destination port
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(port), SkipFalse: 1}, // 6
		bpf.RetConstant{Val: 0xffff},                                     // 7: accept
		bpf.RetConstant{Val: 0},                                          // 8: drop
	})
}

func newRawTransport(ifc Interface, clientPort, serverPort int, deliver func(inbound)) (*rawTransport, error) {
	filter, err := udpPortFilter(uint16(clientPort))
	if err != nil {
		return nil, fmt.Errorf("dhcp: assemble filter: %w", err)
	}
	ifi := &net.Interface{Index: ifc.Index, Name: ifc.Name, HardwareAddr: ifc.MAC}
	conn, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_IP, &packet.Config{Filter: filter})
	if err != nil {
		return nil, fmt.Errorf("dhcp: packet socket on %s: %w", ifc.Name, err)
	}
	tuneSocket(conn)
	t := &rawTransport{conn: conn, clientPort: uint16(clientPort), serverPort: uint16(serverPort)}
	t.wg.Add(1)
	go t.readLoop(deliver)
	return t, nil
}

// tuneSocket stops the kernel from looping our own transmissions back to
// us (Linux 4.20+; harmless to lack, they are filtered anyway) and sizes
// the receive buffer for a storm's burst of answers (beyond
// net.core.rmem_max with CAP_NET_ADMIN, else up to it).
func tuneSocket(conn *packet.Conn) {
	if rc, err := conn.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1<<20) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
			}
		})
	}
}

func (t *rawTransport) readLoop(deliver func(inbound)) {
	defer t.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := t.conn.ReadFrom(buf)
		if err != nil {
			if t.closed.Load() {
				return
			}
			time.Sleep(10 * time.Millisecond) // e.g. ENETDOWN: do not spin
			continue
		}
		_, dst, payload, ok := parseUDP4(buf[:n])
		if !ok || dst.Port() != t.clientPort {
			continue
		}
		m, err := dhcpv4.FromBytes(payload)
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		var mac net.HardwareAddr
		if a, ok := from.(*packet.Addr); ok {
			mac = append(mac, a.HardwareAddr...)
		}
		deliver(inbound{msg: m, mac: mac})
	}
}

func (t *rawTransport) send(m *dhcpv4.DHCPv4, to dest) error {
	src := netip.IPv4Unspecified()
	if to.src.IsValid() {
		src = to.src
	}
	dstIP, mac := netip.AddrFrom4([4]byte{255, 255, 255, 255}), broadcastMAC
	if to.server.IsValid() {
		dstIP = to.server
		if len(to.mac) == 6 {
			mac = to.mac
		}
		// Unknown next hop: a broadcast frame carrying a unicast IP packet
		// still reaches the server (Linux accepts it by default).
	}
	frame := buildUDP4(netip.AddrPortFrom(src, t.clientPort), netip.AddrPortFrom(dstIP, t.serverPort), m.ToBytes())
	_, err := t.conn.WriteTo(frame, &packet.Addr{HardwareAddr: mac})
	return err
}

func (t *rawTransport) close() error {
	t.closed.Store(true)
	err := t.conn.Close()
	t.wg.Wait()
	return err
}

// relayTransport acts as a BOOTP relay agent (RFC 1542) for our own
// clients: unicast UDP to the server from giaddr:serverPort, answers back
// to the same socket. No raw socket and no root needed.
type relayTransport struct {
	conn       *net.UDPConn
	server     netip.AddrPort
	giaddr     netip.Addr
	serverPort uint16
	closed     atomic.Bool
	wg         sync.WaitGroup
}

func newRelayTransport(server netip.AddrPort, giaddr netip.Addr, serverPort int, deliver func(inbound)) (*relayTransport, error) {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(giaddr, uint16(serverPort))))
	if err != nil {
		return nil, fmt.Errorf("dhcp: relay socket %s:%d: %w", giaddr, serverPort, err)
	}
	t := &relayTransport{conn: conn, server: server, giaddr: giaddr, serverPort: uint16(serverPort)}
	t.wg.Add(1)
	go t.readLoop(deliver)
	return t, nil
}

func (t *relayTransport) readLoop(deliver func(inbound)) {
	defer t.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, _, err := t.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if t.closed.Load() {
				return
			}
			time.Sleep(10 * time.Millisecond) // e.g. ENETDOWN: do not spin
			continue
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		deliver(inbound{msg: m})
	}
}

func (t *relayTransport) send(m *dhcpv4.DHCPv4, to dest) error {
	m.GatewayIPAddr = t.giaddr.AsSlice()
	if m.HopCount == 0 {
		m.HopCount = 1
	}
	dst := t.server
	if to.server.IsValid() && to.server != t.server.Addr() {
		dst = netip.AddrPortFrom(to.server, t.serverPort)
	}
	_, err := t.conn.WriteToUDPAddrPort(m.ToBytes(), dst)
	return err
}

func (t *relayTransport) close() error {
	t.closed.Store(true)
	err := t.conn.Close()
	t.wg.Wait()
	return err
}
