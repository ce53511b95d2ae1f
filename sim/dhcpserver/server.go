// Package dhcpserver is a synthetic DHCPv4 server for the simulator and for
// tests of ipvirt's DHCP source. It speaks real DHCP (insomniacslk/dhcp's
// dhcpv4 codec and server4 socket), decides in arrival order as real
// servers do, and misbehaves on request: latency, drops, NAKs, outages,
// and a rogue host that claims addresses via ARP.
//
// Start it in-process, or run Main from a child process inside a network
// namespace. Start opens every socket before it returns, so calling it on
// an OS thread switched into a network namespace (runtime.LockOSThread +
// netns.Set) runs the server in that namespace.
package dhcpserver

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"golang.org/x/sys/unix"
)

// Counters are the server's running totals, for assertions.
type Counters struct {
	Received    int // every parsed DHCP packet
	Discovers   int
	Offers      int
	Requests    int
	Acks        int
	Renewals    int // ACKs to REQUESTs with ciaddr set (RENEWING/REBINDING)
	Naks        int
	Releases    int
	Declines    int
	Informs     int
	Drops       int // random drops (DropRate)
	Ignored     int // received while offline
	NoFree      int // DISCOVERs left unanswered: range exhausted
	OtherServer int // REQUESTs that chose another server
	Unoffered   int // REQUESTs for an address not offered, ignored (IgnoreUnoffered)
	ARPReplies  int // rogue ARP answers sent
}

// Server is a running synthetic DHCP server.
type Server struct {
	cfg      Config
	log      *slog.Logger
	serverID netip.Addr
	mask     net.IPMask
	conn     net.PacketConn
	arp      *rogueARP
	start    time.Time
	done     chan struct{}

	mu         sync.Mutex
	table      *table
	counters   Counters
	rng        *rand.Rand
	offline    bool
	nakNext    int
	requestsBy map[string]int
	nakClients map[string]bool
	offered    map[string]netip.Addr // last address offered, by client
	changed    chan struct{}         // closed and replaced on every change
}

// Start opens the server's sockets and serves until ctx ends or Close.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	s, err := newServer(cfg, log)
	if err != nil {
		return nil, err
	}
	cfg = s.cfg
	listen, _ := netip.ParseAddrPort(cfg.Listen) // checked by Validate
	conn, err := server4.NewIPv4UDPConn(cfg.Interface, net.UDPAddrFromAddrPort(listen))
	if err != nil {
		return nil, fmt.Errorf("dhcpserver: listen %s on %q: %w", cfg.Listen, cfg.Interface, err)
	}
	s.conn = conn
	growReadBuffer(conn)
	if len(cfg.ARPInUse) > 0 {
		s.arp, err = startRogueARP(cfg.Interface, cfg.ARPInUse, s.countARP)
		if err != nil {
			conn.Close()
			return nil, err
		}
	}
	go func() {
		defer close(s.done)
		s.serve(conn) // returns when the conn is closed
	}()
	go func() {
		select {
		case <-ctx.Done():
			s.Close()
		case <-s.done:
		}
	}()
	s.log.Info("dhcpserver: serving", "listen", conn.LocalAddr().String(), "interface", cfg.Interface,
		"range", cfg.RangeStart.String()+"-"+cfg.RangeEnd.String(), "lease", cfg.LeaseTime)
	return s, nil
}

// newServer builds the server's state without any socket.
func newServer(cfg Config, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	listen, _ := netip.ParseAddrPort(cfg.Listen)
	serverID, err := pickServerID(cfg, listen)
	if err != nil {
		return nil, err
	}
	seed := uint64(cfg.Seed)
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	s := &Server{
		cfg:        cfg,
		log:        log.With("server", serverID.String()),
		serverID:   serverID,
		mask:       net.CIDRMask(cfg.PrefixLen, 32),
		start:      time.Now(),
		done:       make(chan struct{}),
		table:      newTable(cfg.RangeStart, cfg.RangeEnd, serverID, cfg.Router),
		rng:        rand.New(rand.NewPCG(seed, seed>>1|1)),
		requestsBy: map[string]int{},
		offered:    map[string]netip.Addr{},
		nakClients: map[string]bool{},
		changed:    make(chan struct{}),
	}
	for _, c := range cfg.NAKClients {
		s.nakClients[c] = true
	}
	return s, nil
}

// growReadBuffer lets a burst of a storm's requests queue instead of being
// dropped by the kernel (beyond net.core.rmem_max when root).
func growReadBuffer(conn *net.UDPConn) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20) != nil {
			_ = conn.SetReadBuffer(4 << 20)
		}
	})
}

func pickServerID(cfg Config, listen netip.AddrPort) (netip.Addr, error) {
	if cfg.ServerID.IsValid() {
		return cfg.ServerID, nil
	}
	if ip := listen.Addr(); ip.Is4() && !ip.IsUnspecified() {
		return ip, nil
	}
	if cfg.Interface != "" {
		ifi, err := net.InterfaceByName(cfg.Interface)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("dhcpserver: interface %q: %w", cfg.Interface, err)
		}
		addrs, err := ifi.Addrs()
		if err != nil {
			return netip.Addr{}, fmt.Errorf("dhcpserver: interface %q addresses: %w", cfg.Interface, err)
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok && n.IP.To4() != nil {
					return ip, nil
				}
			}
		}
	}
	return netip.Addr{}, errors.New("dhcpserver: server_id unset and no IPv4 address on listen or interface to default to")
}

// Addr is the address the server listens on (with the real port when
// Listen asked for port 0).
func (s *Server) Addr() netip.AddrPort {
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Close stops serving. Safe to call more than once.
func (s *Server) Close() error {
	s.closeSockets()
	<-s.done
	return nil
}

func (s *Server) closeSockets() {
	s.conn.Close()
	if s.arp != nil {
		s.arp.close()
	}
}

// SetOffline takes the server off the air (it keeps receiving and ignores
// everything) or brings it back; it overrides Config.Offline while set.
func (s *Server) SetOffline(off bool) {
	s.mu.Lock()
	s.offline = off
	s.mu.Unlock()
}

// NAKNext makes the next n REQUESTs (from any client) get a NAK.
func (s *Server) NAKNext(n int) {
	s.mu.Lock()
	s.nakNext = n
	s.mu.Unlock()
}

// Counters returns a snapshot of the totals.
func (s *Server) Counters() Counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counters
}

// Leases returns the bound, unexpired leases, sorted by address.
func (s *Server) Leases() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.table.leases(time.Now())
}

// Declined returns the addresses currently withheld after a DECLINE.
func (s *Server) Declined() []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.table.declinedAddrs(time.Now())
}

// Wait blocks until cond holds (checked after every change the server
// makes) or ctx ends. cond must not call back into s.
func (s *Server) Wait(ctx context.Context, cond func(Counters, []Lease) bool) error {
	for {
		s.mu.Lock()
		ok := cond(s.counters, s.table.leases(time.Now()))
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("dhcpserver: wait: %w (counters %+v)", ctx.Err(), s.Counters())
		}
	}
}

// notify wakes Wait; s.mu must be held.
func (s *Server) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Server) countARP() {
	s.mu.Lock()
	s.counters.ARPReplies++
	s.notify()
	s.mu.Unlock()
}

// ClientKey is how the server identifies a client: option 61 if present,
// else chaddr.
func ClientKey(m *dhcpv4.DHCPv4) string {
	if id := m.Options.Get(dhcpv4.OptionClientIdentifier); len(id) > 0 {
		return "id:" + hex.EncodeToString(id)
	}
	return "hw:" + m.ClientHWAddr.String()
}
