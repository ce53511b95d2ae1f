package dhcp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/sim/dhcpserver"
)

// recorder is the manager's side of source.Events, for assertions.
type recorder struct {
	mu      sync.Mutex
	renewed []lease.Lease
	lost    []lostEvent
	changed chan struct{}
	// onRenewed/onLost run first (the fixture adds/removes VIPs there, as
	// the manager would).
	onRenewed func(lease.Lease)
	onLost    func(lease.Holder, netip.Addr)
}

type lostEvent struct {
	holder lease.Holder
	addr   netip.Addr
	reason error
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) Renewed(l lease.Lease) {
	if r.onRenewed != nil {
		r.onRenewed(l)
	}
	r.mu.Lock()
	r.renewed = append(r.renewed, l)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func (r *recorder) Lost(h lease.Holder, a netip.Addr, reason error) {
	if r.onLost != nil {
		r.onLost(h, a)
	}
	r.mu.Lock()
	r.lost = append(r.lost, lostEvent{h, a, reason})
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// wait blocks until cond holds over the recorded events.
func (r *recorder) wait(t *testing.T, d time.Duration, what string, cond func(renewed []lease.Lease, lost []lostEvent) bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok := cond(r.renewed, r.lost)
		ch := r.changed
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("timed out after %s waiting for %s; renewed %d, lost %v", d, what, len(r.renewed), r.lost)
		}
	}
}

// waitCounters polls the source's counters: they have no change signal of
// their own, and the events they count happen on the wire.
func waitCounters(t *testing.T, s *Source, d time.Duration, what string, cond func(Counters) bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond(s.Counters()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; counters %+v", d, what, s.Counters())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitServer(t *testing.T, srv *dhcpserver.Server, d time.Duration, what string, cond func(dhcpserver.Counters, []dhcpserver.Lease) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := srv.Wait(ctx, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func holder(i int) lease.Holder {
	return lease.Holder{Session: lease.Session{Kind: lease.KindAudit, ID: uint32(1000 + i)}}
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() && os.Getenv("DHCP_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// fastConfig shrinks every RFC timer so a lease life fits in seconds.
func fastConfig() Config {
	off := false
	return Config{
		Hostname:       "testhost",
		LeaseWait:      10 * time.Second,
		RetransmitBase: 200 * time.Millisecond,
		RenewRetryMin:  200 * time.Millisecond,
		ARPProbe:       &off,
		ARPProbeWait:   300 * time.Millisecond,
		MaxInflight:    64,
	}
}

var relayIP atomic.Uint32

// nextRelayIP hands every relay-mode source its own loopback address, so
// sources can bind the server's port side by side.
func nextRelayIP() netip.Addr {
	n := relayIP.Add(1)
	return netip.AddrFrom4([4]byte{127, 0, byte(n >> 8), byte(2 + n%250)})
}

// loopServer starts a synthetic server on loopback, any free port.
func loopServer(t *testing.T, cfg dhcpserver.Config) *dhcpserver.Server {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	if !cfg.RangeStart.IsValid() {
		cfg.RangeStart, cfg.RangeEnd = netip.MustParseAddr("10.77.0.10"), netip.MustParseAddr("10.77.3.250")
		cfg.PrefixLen = 22
	}
	srv, err := dhcpserver.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// relaySource starts a relay-mode source against srv. relay picks the
// loopback giaddr (zero: a fresh one).
func relaySource(t *testing.T, srv *dhcpserver.Server, cfg Config, relay netip.Addr, ev *recorder) *Source {
	t.Helper()
	port := srv.Addr().Port()
	cfg.Server = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.ServerPort = int(port)
	if !relay.IsValid() {
		relay = nextRelayIP()
	}
	cfg.RelayAddress = relay.String()
	s, err := New(cfg, Interface{Name: "lo", Index: 1}, []byte("test-host-id"), ev, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func acquire(t *testing.T, s *Source, h lease.Holder) lease.Lease {
	t.Helper()
	l, err := s.Acquire(context.Background(), h)
	if err != nil {
		t.Fatalf("acquire %s: %v", h, err)
	}
	return l
}
