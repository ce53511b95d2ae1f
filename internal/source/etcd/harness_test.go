package etcd

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source"
	"github.com/ipvirt/ipvirt/internal/testenv"
)

// cluster is a real etcd for the test (testenv.StartEtcd).
type cluster struct{ endpoint string }

func startEtcd(t *testing.T) *cluster { return &cluster{endpoint: testenv.StartEtcd(t)} }

// link is a TCP proxy between one host and etcd that the test can cut: a
// partition of that host alone, the others keep talking to the cluster.
type link struct {
	ln       net.Listener
	endpoint string
	target   string
	mu       sync.Mutex
	cut      bool
	conns    []net.Conn
}

func newLink(t *testing.T, target string) *link {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{ln: ln, endpoint: "http://" + ln.Addr().String(), target: target}
	t.Cleanup(func() { ln.Close(); l.partition(true) })
	go l.serve()
	return l
}

func (l *link) serve() {
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
		up, err := net.Dial("tcp4", l.target[len("http://"):])
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

// partition cuts (true) or restores (false) the host's way to etcd.
func (l *link) partition(cut bool) {
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

// events records what a source tells the manager.
type events struct {
	mu   sync.Mutex
	lost map[netip.Addr]time.Time
	ch   chan struct{}
}

func newEvents() *events {
	return &events{lost: map[netip.Addr]time.Time{}, ch: make(chan struct{}, 1024)}
}

func (e *events) Renewed(lease.Lease) {}
func (e *events) Lost(_ lease.Holder, a netip.Addr, _ error) {
	e.mu.Lock()
	e.lost[a] = time.Now()
	e.mu.Unlock()
	e.ch <- struct{}{}
}

func (e *events) lostCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.lost)
}

var testRange = source.Range{Start: netip.MustParseAddr("10.70.0.10"), End: netip.MustParseAddr("10.70.0.69"),
	Subnet: netip.MustParsePrefix("10.70.0.0/24")}

// host starts a source as one session host of the farm; state is its
// state directory ("" for a fresh one).
func host(t *testing.T, endpoint, name, state string, ttl time.Duration, ev source.Events) (*Source, string) {
	t.Helper()
	if state == "" {
		state = t.TempDir()
	}
	cfg := Config{Endpoints: []string{endpoint}, LeaseTTL: ttl, DialTimeout: 500 * time.Millisecond}
	s, err := New(cfg, testRange, []byte(name+"-host-id-0123456789"), state, ev, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.host = name
	t.Cleanup(func() { s.Close() })
	return s, state
}

func holder(i int) lease.Holder {
	return lease.Holder{Session: lease.Session{Kind: lease.KindAudit, ID: uint32(1000 + i)}}
}
