// Package dbserver is the backend database server of the duplicate-IP
// scenarios (scenarios/duplicate-ip.yaml), the case Windows RD IP
// Virtualization exists for: a TCP server that keeps each client connected
// and refuses any new client whose source IP already has a live connection,
// the way licence servers and some databases key on the client address. It
// is the thing ipvirt exists to satisfy, so the simulator asserts on what it
// saw.
package dbserver

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Verdict lines the server writes; clients print the first word.
const (
	acceptedLine = "OK welcome %s\n"
	refusedLine  = "REFUSED duplicate client address %s (already connected)\n"
)

// Conn is one connection the server saw.
type Conn struct {
	Source   netip.AddrPort
	Accepted bool
	At       time.Time
	// Closed is when an accepted connection ended (zero while it is open):
	// with At it says which connections overlapped in time.
	Closed time.Time
}

// Server is a running database server.
type Server struct {
	ln net.Listener

	mu   sync.Mutex
	live map[netip.Addr]int // live accepted connections per source address
	seen []Conn
	gen  int // counts Resets: a connection closing after one has no row
	open map[net.Conn]struct{}

	accepted, refused prometheus.Counter
	liveGauge         prometheus.Gauge
	wg                sync.WaitGroup
}

// Listen starts a server on addr ("127.0.0.1:0" picks a port) and registers
// its metrics on reg (nil: not exported).
func Listen(addr string, reg prometheus.Registerer) (*Server, error) {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("dbserver: listen %s: %w", addr, err)
	}
	return Serve(ln, reg)
}

// Serve runs the server on an existing listener (one created inside another
// network namespace, for instance).
func Serve(ln net.Listener, reg prometheus.Registerer) (*Server, error) {
	conns := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ipvirt_sim_db_connections_total",
		Help: "Connections the simulated database server accepted or refused (refused: the source address already had a live connection).",
	}, []string{"result"})
	s := &Server{
		ln:       ln,
		live:     map[netip.Addr]int{},
		open:     map[net.Conn]struct{}{},
		accepted: conns.WithLabelValues("accepted"),
		refused:  conns.WithLabelValues("refused"),
		liveGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ipvirt_sim_db_live_connections",
			Help: "Connections the simulated database server holds open.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{conns, s.liveGauge} {
			if err := reg.Register(c); err != nil {
				ln.Close()
				return nil, fmt.Errorf("dbserver: register metrics: %w", err)
			}
		}
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Addr is where the server listens.
func (s *Server) Addr() netip.AddrPort {
	return s.ln.Addr().(*net.TCPAddr).AddrPort()
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like: back off
			continue
		}
		s.handle(c)
	}
}

// handle decides under the lock, so two clients from one address racing
// each other cannot both be accepted.
func (s *Server) handle(c net.Conn) {
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	ip := src.Addr().Unmap()
	s.mu.Lock()
	ok := s.live[ip] == 0
	row, gen := len(s.seen), s.gen
	s.seen = append(s.seen, Conn{Source: netip.AddrPortFrom(ip, src.Port()), Accepted: ok, At: time.Now()})
	if ok {
		s.live[ip]++
		s.open[c] = struct{}{}
		s.accepted.Inc()
		s.liveGauge.Inc()
	} else {
		s.refused.Inc()
	}
	s.mu.Unlock()

	if !ok {
		fmt.Fprintf(c, refusedLine, ip)
		c.Close()
		return
	}
	fmt.Fprintf(c, acceptedLine, ip)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// The client stays until it hangs up; anything it sends is ignored.
		io.Copy(io.Discard, bufio.NewReader(c))
		c.Close()
		s.mu.Lock()
		if _, ok := s.open[c]; ok {
			delete(s.open, c)
			s.live[ip]--
			if s.live[ip] == 0 {
				delete(s.live, ip)
			}
			s.liveGauge.Dec()
		}
		if gen == s.gen && row < len(s.seen) {
			s.seen[row].Closed = time.Now()
		}
		s.mu.Unlock()
	}()
}

// Seen returns every connection so far, in arrival order.
func (s *Server) Seen() []Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Conn(nil), s.seen...)
}

// Live returns the number of open connections.
func (s *Server) Live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.open)
}

// Drop hangs up on every client (between scenario phases) and waits until
// the server has forgotten them.
func (s *Server) Drop() {
	s.mu.Lock()
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && s.Live() > 0; {
		time.Sleep(time.Millisecond)
	}
}

// Reset forgets the connections seen so far (not the live ones).
func (s *Server) Reset() {
	s.mu.Lock()
	s.seen = nil
	s.gen++
	s.mu.Unlock()
}

// Close stops the server and hangs up on every client.
func (s *Server) Close() error {
	err := s.ln.Close()
	s.Drop()
	s.wg.Wait()
	return err
}
