package benchkit

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// UDPListener receives datagrams, the peer of connectloop's udploop, and
// counts them by the source address it saw: the server's proof that every
// send left from the address a variant gives.
type UDPListener struct {
	c *net.UDPConn
	tally
	// Exact is set when the receive buffer could be made large enough for
	// a whole loop (SO_RCVBUFFORCE, which needs CAP_NET_ADMIN): then no
	// datagram of a loop is lost, and a short count is a failure.
	Exact bool
}

// udpBuffer holds a loop of 20,000 one-byte datagrams, each charged about
// a kilobyte (its buffer's true size), with room to spare.
const udpBuffer = 64 << 20

// ListenUDP starts a UDP listener on addr ("127.0.0.1:0").
func ListenUDP(addr string) (*UDPListener, error) {
	a, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp4", a)
	if err != nil {
		return nil, fmt.Errorf("listen on udp %s: %w", addr, err)
	}
	l := &UDPListener{c: c}
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			l.Exact = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpBuffer) == nil
		})
	}
	if !l.Exact {
		c.SetReadBuffer(udpBuffer) // capped at net.core.rmem_max
	}
	go l.serve()
	return l, nil
}

func (l *UDPListener) serve() {
	buf := make([]byte, 64)
	for {
		_, from, err := l.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		l.add(from.Addr().Unmap())
	}
}

// Port is the port the listener got.
func (l *UDPListener) Port() int { return l.c.LocalAddr().(*net.UDPAddr).Port }

// Close stops receiving.
func (l *UDPListener) Close() error { return l.c.Close() }

// Take returns the datagrams counted since the last Take, by source, once
// there are at least want of them, or none has come for half a second
// (the rest were lost, or never sent), or timeout has passed; and starts a
// new count.
func (l *UDPListener) Take(want int, timeout time.Duration) map[netip.Addr]int {
	return l.take(want, timeout, 500*time.Millisecond)
}

// Check is CheckPeers for datagrams: exactly want of them, all from addr;
// or, when the listener is not Exact (its buffer may overflow), at least
// one and all from addr.
func (l *UDPListener) Check(peers map[netip.Addr]int, want int, addr netip.Addr) string {
	if l.Exact || len(peers) != 1 || peers[addr] == 0 {
		return CheckPeers(peers, want, addr)
	}
	return ""
}
