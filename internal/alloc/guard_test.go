package alloc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/census"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/internal/source/static"
	"github.com/ipvirt/ipvirt/internal/store"
)

// fakeCensus reports sockets on the addresses the test says are bound, and
// counts the censuses taken.
type fakeCensus struct {
	mu     sync.Mutex
	bound  map[netip.Addr]bool
	rounds int
	extras [][]netip.Addr
	delay  time.Duration
	err    error
}

func (f *fakeCensus) Bound(extra []netip.Addr) ([]census.Socket, error) {
	f.mu.Lock()
	f.rounds++
	f.extras = append(f.extras, extra)
	var out []census.Socket
	for a, b := range f.bound {
		if b {
			out = append(out, census.Socket{Proto: census.TCP, Local: netip.AddrPortFrom(a, 4242), UID: 4001, Inode: 1})
		}
	}
	delay, err := f.delay, f.err
	f.mu.Unlock()
	time.Sleep(delay)
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (f *fakeCensus) Describe(socks []census.Socket) string { return "pid 1 (fake)" }

func (f *fakeCensus) set(a string, bound bool) {
	f.mu.Lock()
	if f.bound == nil {
		f.bound = map[netip.Addr]bool{}
	}
	f.bound[netip.MustParseAddr(a)] = bound
	f.mu.Unlock()
}

func (f *fakeCensus) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rounds
}

// everyone is a scanner that shows sessions 1-1000 alive.
type everyone struct{}

func (everyone) Scan(bool) (identity.Snapshot, error) {
	snap := identity.Snapshot{Sessions: map[lease.Session]*identity.SessionInfo{}}
	for id := range uint32(1000) {
		s := lease.Session{Kind: lease.KindAudit, ID: id + 1}
		snap.Sessions[s] = &identity.SessionInfo{Session: s, UID: 60001, Procs: 1}
	}
	return snap, nil
}

func guardedManager(t *testing.T, pool static.Config, c *fakeCensus, everyGrant bool) (*Manager, *static.Source, *store.Store) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	src, err := static.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	m := New(Options{Source: src, Store: st, Scanner: everyone{}, Users: identity.NewUsers(time.Hour),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Census: c, CensusEveryGrant: everyGrant},
		Settings{Policy: policy.Settings{Enabled: true, Mode: policy.PerSession}, OnExhausted: ExhaustedMachineIP, Grace: time.Hour})
	if _, err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	return m, src, st
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// An address a socket is bound to is never granted, whatever the source
// thinks: it is set aside and the next one granted; once a census shows it
// free it goes back to the pool.
func TestGuardSetsAsideBoundAddresses(t *testing.T) {
	c := &fakeCensus{}
	c.set("127.77.0.10", true)
	m, src, _ := guardedManager(t, testPool, c, false)
	a := m.Query(context.Background(), caller(1))
	if a.Kind != wire.KindVIP || a.Lease.Addr != addr("127.77.0.11") {
		t.Fatalf("first grant: %+v; want 127.77.0.11 (127.77.0.10 has a socket on it)", a)
	}
	if got := m.SetAside(); !slices.Equal(got, []netip.Addr{addr("127.77.0.10")}) {
		t.Fatalf("set aside: %v", got)
	}
	if used := src.Stats().Used; used != 2 {
		t.Fatalf("the source counts %d addresses used, want 2 (the lease and the one set aside)", used)
	}
	m.ScanOnce() // still bound: stays aside
	if got := m.SetAside(); len(got) != 1 {
		t.Fatalf("set aside after a scan that still sees the socket: %v", got)
	}
	c.set("127.77.0.10", false)
	m.ScanOnce()
	if got := m.SetAside(); len(got) != 0 {
		t.Fatalf("still set aside after its socket closed: %v", got)
	}
	if used := src.Stats().Used; used != 1 {
		t.Fatalf("the source counts %d addresses used, want 1", used)
	}
	var got []netip.Addr
	for id := uint32(2); id <= 3; id++ {
		a := m.Query(context.Background(), caller(id))
		if a.Kind != wire.KindVIP {
			t.Fatalf("caller %d: %+v", id, a)
		}
		got = append(got, a.Lease.Addr)
	}
	if !slices.Contains(got, addr("127.77.0.10")) {
		t.Fatalf("127.77.0.10 never granted again: %v", got)
	}
}

// The census is not taken per grant: addresses never released are vouched
// for by the last one, and an address released since the last census
// started waits for a new one (its old holder's sockets may still be
// bound to it).
func TestGuardCensusOnlyAfterRelease(t *testing.T) {
	c := &fakeCensus{}
	m, _, _ := guardedManager(t, testPool, c, false)
	for id := uint32(1); id <= 3; id++ {
		if a := m.Query(context.Background(), caller(id)); a.Kind != wire.KindVIP {
			t.Fatalf("caller %d: %+v", id, a)
		}
	}
	if n := c.count(); n != 1 {
		t.Fatalf("%d censuses for 3 grants of addresses never released, want 1", n)
	}
	first, _ := m.Lease(lease.Holder{Session: caller(1).Session})
	// An administrator takes caller 1's VIP; its program keeps its socket.
	c.set(first.Addr.String(), true)
	if rel := m.ReleaseSession(caller(1).Session); len(rel) != 1 {
		t.Fatalf("release: %v", rel)
	}
	a := m.Query(context.Background(), caller(4))
	if a.Kind == wire.KindVIP {
		t.Fatalf("caller 4 got %s, released a moment ago and still bound", a.Lease.Addr)
	}
	if n := c.count(); n != 2 {
		t.Fatalf("%d censuses, want 2: the released address needed a fresh one", n)
	}
	if got := m.SetAside(); !slices.Equal(got, []netip.Addr{first.Addr}) {
		t.Fatalf("set aside: %v, want %s", got, first.Addr)
	}
	// Closed: the next scan's census gives it back, and it is granted.
	c.set(first.Addr.String(), false)
	m.ScanOnce()
	if a := m.Query(context.Background(), caller(5)); a.Lease.Addr != first.Addr {
		t.Fatalf("caller 5: %+v, want %s", a, first.Addr)
	}
}

// Grants that each need a fresh census share them: one census serves
// every grant waiting (DHCP's mode: every grant needs one of its own).
func TestGuardBatchesCensuses(t *testing.T) {
	c := &fakeCensus{delay: 20 * time.Millisecond}
	pool := static.Config{Start: addr("127.77.0.10"), End: addr("127.77.0.250"), SubnetMask: addr("255.255.255.0")}
	m, _, _ := guardedManager(t, pool, c, true)
	const n = 100
	var wg sync.WaitGroup
	vips := make([]netip.Addr, n)
	for i := range n {
		wg.Go(func() {
			if a := m.Query(context.Background(), caller(uint32(i+1))); a.Kind == wire.KindVIP {
				vips[i] = a.Lease.Addr
			}
		})
	}
	wg.Wait()
	checked := map[netip.Addr]bool{}
	c.mu.Lock()
	rounds := c.rounds
	for _, ex := range c.extras {
		for _, a := range ex {
			checked[a] = true
		}
	}
	c.mu.Unlock()
	for i, v := range vips {
		if !v.IsValid() {
			t.Fatalf("caller %d got no VIP", i+1)
		}
		if !checked[v] {
			t.Fatalf("%s granted without a census of it", v)
		}
	}
	if rounds > n/4 {
		t.Fatalf("%d censuses for %d grants: they are not shared", rounds, n)
	}
	t.Logf("%d grants, %d censuses", n, rounds)
}

// A census that fails grants nothing it was needed for: the caller gets
// the on_exhausted answer and the address stays in the pool.
func TestGuardCensusFailure(t *testing.T) {
	c := &fakeCensus{err: errors.New("sock_diag: no such protocol")}
	m, src, _ := guardedManager(t, testPool, c, false)
	a := m.Query(context.Background(), caller(1))
	if a.Kind != wire.KindMIP || !strings.Contains(a.Reason, "socket census") {
		t.Fatalf("with the census failing: %+v", a)
	}
	if used := src.Stats().Used; used != 0 {
		t.Fatalf("%d addresses used after a failed grant", used)
	}
	c.mu.Lock()
	c.err = nil
	c.mu.Unlock()
	if a := m.Query(context.Background(), caller(1)); a.Kind != wire.KindVIP {
		t.Fatalf("with the census back: %+v", a)
	}
}

// Claim adopts a holder found by its sockets: durable, counted by the
// source, granted to observers; never over another holder or a second
// lease of the same holder.
func TestClaim(t *testing.T) {
	c := &fakeCensus{}
	m, src, st := guardedManager(t, testPool, c, false)
	rec := &recorder{}
	m.AddObserver(rec)
	h := lease.Holder{Session: caller(7).Session}
	l, err := m.Claim(h, addr("127.77.0.11"), 4007)
	if err != nil {
		t.Fatal(err)
	}
	if l.UID != 4007 || l.Subnet != netip.MustParsePrefix("127.77.0.0/24") || l.Source != static.Name {
		t.Fatalf("claimed lease: %+v", l)
	}
	if got, ok := m.Lease(h); !ok || got.Addr != l.Addr {
		t.Fatalf("manager after Claim: %+v %v", got, ok)
	}
	if stored, _ := st.Leases(); len(stored) != 1 || stored[0].Addr != l.Addr {
		t.Fatalf("store after Claim: %+v", stored)
	}
	if len(rec.granted) != 1 || src.Stats().Used != 1 {
		t.Fatalf("observers told %d grants, source uses %d", len(rec.granted), src.Stats().Used)
	}
	if _, err := m.Claim(h, addr("127.77.0.12"), 4007); err == nil {
		t.Fatal("a holder with a lease claimed a second address")
	}
	if _, err := m.Claim(lease.Holder{Session: caller(8).Session}, addr("127.77.0.11"), 4008); err == nil {
		t.Fatal("a second holder claimed a held address")
	}
	// Nobody else is granted it.
	for id := uint32(20); id < 22; id++ {
		if a := m.Query(context.Background(), caller(id)); a.Lease.Addr == l.Addr {
			t.Fatalf("caller %d got the claimed %s", id, l.Addr)
		}
	}
}

// A reload that moves the pool brings addresses no census has looked at:
// the next grant waits for one.
func TestGuardCensusAfterScopeChange(t *testing.T) {
	c := &fakeCensus{}
	m, _, _ := guardedManager(t, testPool, c, false)
	if a := m.Query(context.Background(), caller(1)); a.Kind != wire.KindVIP || c.count() != 1 {
		t.Fatalf("first grant: %+v after %d censuses", a, c.count())
	}
	m.CensusScopeChanged()
	c.set("127.77.0.11", true)
	if a := m.Query(context.Background(), caller(2)); a.Kind != wire.KindVIP || a.Lease.Addr != addr("127.77.0.12") {
		t.Fatalf("grant after the scope changed: %+v; want 127.77.0.12 (.11 is bound)", a)
	}
	if n := c.count(); n != 2 {
		t.Fatalf("%d censuses, want 2", n)
	}
}
