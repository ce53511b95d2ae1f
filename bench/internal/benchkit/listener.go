package benchkit

import (
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Listener accepts and closes TCP connections, the peer the loops time,
// and counts them by the source address it saw. The server's view is the
// proof a variant applied its address: a SNAT rule leaves the client's own
// getsockname unchanged.
type Listener struct {
	ln net.Listener
	tally
}

// Listen starts a listener on addr ("127.0.0.1:0"). Call it on a thread
// inside a network namespace to listen there.
func Listen(addr string) (*Listener, error) {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	l := &Listener{ln: ln}
	go l.serve()
	return l, nil
}

func (l *Listener) serve() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		c.Close()
		l.add(from)
	}
}

// Port is the port the listener got.
func (l *Listener) Port() int { return l.ln.Addr().(*net.TCPAddr).Port }

// Close stops accepting.
func (l *Listener) Close() error { return l.ln.Close() }

// Take returns the connections counted since the last Take, by source,
// once there are at least want of them (the accept loop may trail the
// client by a few) or timeout has passed, and starts a new count.
func (l *Listener) Take(want int, timeout time.Duration) map[netip.Addr]int {
	return l.take(want, timeout, 0)
}

// Check is CheckPeers: a TCP listener loses no connection.
func (l *Listener) Check(peers map[netip.Addr]int, want int, addr netip.Addr) string {
	return CheckPeers(peers, want, addr)
}

// CheckPeers says why peers (from Take) are not exactly want connections
// all from addr, or "" when they are.
func CheckPeers(peers map[netip.Addr]int, want int, addr netip.Addr) string {
	if len(peers) == 1 && peers[addr] == want {
		return ""
	}
	return fmt.Sprintf("the listener saw %v, want %d connections from %s", peers, want, addr)
}
