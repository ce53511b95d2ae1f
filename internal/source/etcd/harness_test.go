package etcd

import (
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

// link is testenv.Link, closed when the test ends.
type link struct{ *testenv.Link }

func newLink(t *testing.T, target string) link {
	t.Helper()
	l, err := testenv.NewLink(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return link{l}
}

func (l link) partition(cut bool) { l.Partition(cut) }

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
