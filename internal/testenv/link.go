package testenv

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
)

// Link is a TCP proxy between one etcd client (a session host) and one
// etcd endpoint that can be cut: a partition of that host alone while the
// others keep talking to the cluster. Cutting closes every connection it
// carries and refuses new ones until restored.
type Link struct {
	// Endpoint is the URL the cut-able host connects to.
	Endpoint string
	ln       net.Listener
	target   string // host:port

	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

// NewLink listens on a loopback port and forwards to target, an http://
// URL.
func NewLink(target string) (*Link, error) {
	addr, ok := strings.CutPrefix(target, "http://")
	if !ok {
		return nil, fmt.Errorf("link: %q is not an http:// URL", target)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("link: %w", err)
	}
	l := &Link{ln: ln, Endpoint: "http://" + ln.Addr().String(), target: addr}
	go l.serve()
	return l, nil
}

func (l *Link) serve() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.cut {
			l.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp4", l.target)
		if err != nil {
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.conns = append(l.conns, c, up)
		l.mu.Unlock()
		go func() { io.Copy(up, c); up.Close() }()
		go func() { io.Copy(c, up); c.Close() }()
	}
}

// Partition cuts (true) or restores (false) the way through the link.
func (l *Link) Partition(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if cut {
		for _, c := range l.conns {
			c.Close()
		}
		l.conns = nil
	}
}

// Close stops listening and cuts what is left.
func (l *Link) Close() {
	l.ln.Close()
	l.Partition(true)
}
