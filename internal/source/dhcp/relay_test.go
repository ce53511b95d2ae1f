package dhcp

import (
	"context"
	"encoding/hex"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source"
	"github.com/ipvirt/ipvirt/sim/dhcpserver"
)

// The client against the synthetic server in relay mode over loopback:
// real packets, no root.

func TestRelayAcquireRelease(t *testing.T) {
	t.Parallel()
	srv := loopServer(t, dhcpserver.Config{LeaseTime: time.Hour})
	s := relaySource(t, srv, fastConfig(), netip.Addr{}, newRecorder())

	seen := map[netip.Addr]bool{}
	var leases []lease.Lease
	for i := range 3 {
		l := acquire(t, s, holder(i))
		if seen[l.Addr] {
			t.Fatalf("address %s handed out twice", l.Addr)
		}
		seen[l.Addr] = true
		if l.Source != "dhcp" || l.Holder != holder(i) || l.Subnet != netip.MustParsePrefix("10.77.0.0/22") {
			t.Fatalf("lease %+v: wrong source/holder/subnet", l)
		}
		if d := time.Until(l.Expiry); d < 59*time.Minute || d > time.Hour {
			t.Fatalf("expiry %s from now, want ~1h", d)
		}
		leases = append(leases, l)
	}
	if st := s.Stats(); st.Size != -1 || st.Used != 3 || !st.Healthy {
		t.Fatalf("stats %+v", st)
	}

	table := srv.Leases()
	if len(table) != 3 {
		t.Fatalf("server has %d leases, want 3", len(table))
	}
	for _, sl := range table {
		if sl.VendorClass != "ipvirt" || sl.Hostname != "testhost" {
			t.Errorf("server lease %+v: want vendor class ipvirt and hostname testhost", sl)
		}
	}
	for i, l := range leases {
		want := "id:" + hex.EncodeToString(s.ClientID(holder(i)))
		found := false
		for _, sl := range table {
			found = found || (sl.Client == want && sl.Addr == l.Addr)
		}
		if !found {
			t.Errorf("server has no lease %s for client %s", l.Addr, want)
		}
	}

	s.Release(leases[1])
	waitServer(t, srv, 5*time.Second, "RELEASE", func(c dhcpserver.Counters, ls []dhcpserver.Lease) bool {
		return c.Releases == 1 && len(ls) == 2
	})
	for _, sl := range srv.Leases() {
		if sl.Addr == leases[1].Addr {
			t.Fatalf("released %s still leased on the server", sl.Addr)
		}
	}
	if st := s.Stats(); st.Used != 2 {
		t.Fatalf("used %d after release, want 2", st.Used)
	}
}

// fastLease is a server whose leases go through T1, T2 and expiry in
// seconds.
func fastLease(lease, t1, t2 time.Duration) dhcpserver.Config {
	return dhcpserver.Config{LeaseTime: lease, T1: t1, T2: t2}
}

func TestRelayRenewAtT1(t *testing.T) {
	t.Parallel()
	srv := loopServer(t, fastLease(4*time.Second, time.Second, 3*time.Second))
	ev := newRecorder()
	s := relaySource(t, srv, fastConfig(), netip.Addr{}, ev)
	l := acquire(t, s, holder(0))
	ev.wait(t, 15*time.Second, "two renewals", func(r []lease.Lease, _ []lostEvent) bool { return len(r) >= 2 })
	ev.mu.Lock()
	r := ev.renewed[1]
	ev.mu.Unlock()
	if r.Addr != l.Addr || !r.Expiry.After(l.Expiry) || r.Granted != l.Granted {
		t.Fatalf("renewed %+v, from %+v: want same address and granted time, later expiry", r, l)
	}
	c := s.Counters()
	if c.Renewals < 2 || c.Rebinds != 0 || c.Lost != 0 {
		t.Fatalf("counters %+v: want >= 2 renewals, no rebind, nothing lost", c)
	}
	if sc := srv.Counters(); sc.Renewals < 2 || sc.Discovers != 1 {
		t.Fatalf("server counters %+v: want renewals and a single DISCOVER", sc)
	}
}

func TestRelayRebindWhenRenewUnanswered(t *testing.T) {
	t.Parallel()
	srv := loopServer(t, fastLease(8*time.Second, time.Second, 3*time.Second))
	ev := newRecorder()
	s := relaySource(t, srv, fastConfig(), netip.Addr{}, ev)
	l := acquire(t, s, holder(0))
	srv.SetOffline(true)
	waitCounters(t, s, 10*time.Second, "a rebind attempt", func(c Counters) bool { return c.RebindAttempts >= 1 })
	srv.SetOffline(false)
	ev.wait(t, 10*time.Second, "rebind", func(r []lease.Lease, _ []lostEvent) bool { return len(r) >= 1 })
	c := s.Counters()
	if c.RenewAttempts < 1 || c.Renewals != 0 || c.Rebinds != 1 || c.Lost != 0 {
		t.Fatalf("counters %+v: want unanswered renewals then one rebind", c)
	}
	if sc := srv.Counters(); sc.Ignored < 2 {
		t.Fatalf("server counters %+v: want the offline server to have ignored renew and rebind", sc)
	}
	if got := ev.renewed[0]; got.Addr != l.Addr || !got.Expiry.After(l.Expiry) {
		t.Fatalf("rebind gave %+v, want %s with a later expiry", got, l.Addr)
	}
}

func TestRelayExpiryLostThenReacquire(t *testing.T) {
	t.Parallel()
	srv := loopServer(t, fastLease(3*time.Second, time.Second, 2*time.Second))
	ev := newRecorder()
	s := relaySource(t, srv, fastConfig(), netip.Addr{}, ev)
	l := acquire(t, s, holder(0))
	srv.SetOffline(true)
	ev.wait(t, 10*time.Second, "expiry", func(_ []lease.Lease, lost []lostEvent) bool { return len(lost) == 1 })
	e := ev.lost[0]
	if e.holder != holder(0) || e.addr != l.Addr || !errors.Is(e.reason, errExpired) {
		t.Fatalf("lost %+v, want %s expired", e, l.Addr)
	}
	if !time.Now().After(l.Expiry) {
		t.Fatalf("lost before expiry %s", l.Expiry)
	}
	if st := s.Stats(); st.Used != 0 || st.Healthy {
		t.Fatalf("stats %+v: want nothing used and unhealthy (server silent)", st)
	}
	if c := s.Counters(); c.Expiries != 1 || c.RenewAttempts == 0 || c.RebindAttempts == 0 {
		t.Fatalf("counters %+v", c)
	}

	srv.SetOffline(false)
	l2 := acquire(t, s, holder(0))
	if l2.Addr != l.Addr {
		t.Errorf("re-acquired %s, want the old address %s back (same client id)", l2.Addr, l.Addr)
	}
	if st := s.Stats(); !st.Healthy || st.Used != 1 {
		t.Fatalf("stats %+v after re-acquire", st)
	}
}

func TestRelayNAK(t *testing.T) {
	t.Parallel()
	t.Run("acquire restarts after NAK", func(t *testing.T) {
		t.Parallel()
		srv := loopServer(t, dhcpserver.Config{NAKFirst: 2})
		s := relaySource(t, srv, fastConfig(), netip.Addr{}, newRecorder())
		acquire(t, s, holder(0))
		if c := s.Counters(); c.Naks != 2 || c.Acks != 1 {
			t.Fatalf("counters %+v: want 2 NAKs then an ACK", c)
		}
		if sc := srv.Counters(); sc.Discovers != 3 || sc.Naks != 2 || sc.Acks != 1 {
			t.Fatalf("server counters %+v: want a fresh DISCOVER after each NAK", sc)
		}
	})
	t.Run("renewal NAK loses the lease", func(t *testing.T) {
		t.Parallel()
		srv := loopServer(t, fastLease(6*time.Second, time.Second, 5*time.Second))
		ev := newRecorder()
		s := relaySource(t, srv, fastConfig(), netip.Addr{}, ev)
		l := acquire(t, s, holder(0))
		srv.NAKNext(1)
		ev.wait(t, 10*time.Second, "Lost after NAK", func(_ []lease.Lease, lost []lostEvent) bool { return len(lost) == 1 })
		var nak *nakError
		if e := ev.lost[0]; e.addr != l.Addr || !errors.As(e.reason, &nak) {
			t.Fatalf("lost %+v, want %s by NAK", e, l.Addr)
		}
		if time.Now().After(l.Expiry) {
			t.Fatal("lost only at expiry, want at the NAK")
		}
	})
}

func TestRelayRestartAdopts(t *testing.T) {
	t.Parallel()
	srv := loopServer(t, fastLease(6*time.Second, time.Second, 5*time.Second))
	relay := nextRelayIP()
	s1 := relaySource(t, srv, fastConfig(), relay, newRecorder())
	l := acquire(t, s1, holder(0))
	expired := acquire(t, s1, holder(1))
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	if sc := srv.Counters(); sc.Releases != 0 || len(srv.Leases()) != 2 {
		t.Fatalf("Close released leases: %+v", sc)
	}
	discovers := srv.Counters().Discovers

	// Pretend holder 1's lease ran out while the daemon was down.
	st, err := parseState(expired.State)
	if err != nil {
		t.Fatal(err)
	}
	st.Bound = st.Bound.Add(-time.Minute)
	expired.State, expired.Expiry = st.marshal(), st.expiry()

	ev := newRecorder()
	s2 := relaySource(t, srv, fastConfig(), relay, ev)
	for _, pl := range []lease.Lease{l, expired} {
		if err := s2.Adopt(pl); err != nil {
			t.Fatal(err)
		}
	}
	if st := s2.Stats(); st.Used != 2 {
		t.Fatalf("used %d after adopt, want 2", st.Used)
	}
	ev.wait(t, 10*time.Second, "renewal of both adopted leases", func(r []lease.Lease, _ []lostEvent) bool {
		return ev.renewedOfLocked(r, holder(0)) >= 1 && ev.renewedOfLocked(r, holder(1)) >= 1
	})
	if sc := srv.Counters(); sc.Discovers != discovers {
		t.Fatalf("server saw %d DISCOVERs after the restart, want none", sc.Discovers-discovers)
	}
	if c := s2.Counters(); c.Reboots != 1 || c.Renewals < 1 {
		t.Fatalf("counters %+v: want one INIT-REBOOT and a renewal", c)
	}
	ev.mu.Lock()
	for _, r := range ev.renewed {
		if (r.Holder == holder(0) && r.Addr != l.Addr) || (r.Holder == holder(1) && r.Addr != expired.Addr) {
			t.Errorf("renewed %+v: address changed", r)
		}
	}
	ev.mu.Unlock()

	// Adopt is strict about what it takes.
	bad := l
	bad.State = []byte{9}
	for _, tc := range []struct {
		name string
		l    lease.Lease
	}{
		{"already held", l},
		{"bad state", func() lease.Lease { b := bad; b.Holder = holder(7); return b }()},
		{"other source", func() lease.Lease { b := l; b.Holder, b.Source = holder(8), "static"; return b }()},
	} {
		if err := s2.Adopt(tc.l); err == nil {
			t.Errorf("Adopt(%s): no error", tc.name)
		}
	}
}

func (r *recorder) renewedOfLocked(ls []lease.Lease, h lease.Holder) int {
	n := 0
	for _, l := range ls {
		if l.Holder == h {
			n++
		}
	}
	return n
}

func TestRelaySameAddressAfterRestartWithoutAdopt(t *testing.T) {
	t.Parallel()
	srv := loopServer(t, dhcpserver.Config{})
	relay := nextRelayIP()
	s1 := relaySource(t, srv, fastConfig(), relay, newRecorder())
	var first []netip.Addr
	for i := range 5 {
		first = append(first, acquire(t, s1, holder(i)).Addr)
	}
	s1.Close()
	s2 := relaySource(t, srv, fastConfig(), relay, newRecorder())
	for i := 4; i >= 0; i-- { // other order: the client id decides, not luck
		if got := acquire(t, s2, holder(i)).Addr; got != first[i] {
			t.Errorf("holder %d: got %s after restart, had %s", i, got, first[i])
		}
	}
}

func TestRelayStorm(t *testing.T) {
	t.Parallel()
	srv := loopServer(t, dhcpserver.Config{})
	cfg := fastConfig()
	cfg.RetransmitBase = time.Second
	s := relaySource(t, srv, cfg, netip.Addr{}, newRecorder())
	const n = 500
	addrs := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			l, err := s.Acquire(context.Background(), holder(i))
			addrs[i], errs[i] = l.Addr, err
		})
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("holder %d: %v", i, errs[i])
		}
		if j, dup := seen[addrs[i]]; dup {
			t.Fatalf("holders %d and %d both got %s", j, i, addrs[i])
		}
		seen[addrs[i]] = i
	}
	if got := len(srv.Leases()); got != n {
		t.Fatalf("server has %d leases, want %d", got, n)
	}
	if c := s.Counters(); c.InFlight != 0 || c.Held != n {
		t.Fatalf("counters %+v", c)
	}
}

func TestRelayExhausted(t *testing.T) {
	t.Parallel()
	t.Run("range full", func(t *testing.T) {
		t.Parallel()
		srv := loopServer(t, dhcpserver.Config{
			RangeStart: netip.MustParseAddr("10.78.0.10"), RangeEnd: netip.MustParseAddr("10.78.0.11")})
		cfg := fastConfig()
		cfg.LeaseWait = time.Second
		s := relaySource(t, srv, cfg, netip.Addr{}, newRecorder())
		acquire(t, s, holder(0))
		acquire(t, s, holder(1))
		start := time.Now()
		_, err := s.Acquire(context.Background(), holder(2))
		if !errors.Is(err, source.ErrExhausted) {
			t.Fatalf("third acquire: %v, want ErrExhausted", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("gave up after %s, lease_wait is 1s", d)
		}
		if sc := srv.Counters(); sc.NoFree == 0 {
			t.Fatalf("server counters %+v: want unanswered DISCOVERs", sc)
		}
		if c := s.Counters(); c.Timeouts != 1 {
			t.Fatalf("counters %+v", c)
		}
	})
	t.Run("server silent", func(t *testing.T) {
		t.Parallel()
		srv := loopServer(t, dhcpserver.Config{})
		srv.SetOffline(true)
		cfg := fastConfig()
		cfg.LeaseWait = time.Second
		s := relaySource(t, srv, cfg, netip.Addr{}, newRecorder())
		if st := s.Stats(); !st.Healthy {
			t.Fatalf("stats %+v before any exchange", st)
		}
		_, err := s.Acquire(context.Background(), holder(0))
		if !errors.Is(err, source.ErrExhausted) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("acquire: %v, want ErrExhausted after the deadline", err)
		}
		if st := s.Stats(); st.Healthy || st.Health == "" {
			t.Fatalf("stats %+v: want unhealthy with a reason", st)
		}
		if c := s.Counters(); c.Retransmits < 2 {
			t.Fatalf("counters %+v: want DISCOVER retransmissions", c)
		}
	})
	t.Run("caller cancels", func(t *testing.T) {
		t.Parallel()
		srv := loopServer(t, dhcpserver.Config{})
		srv.SetOffline(true)
		s := relaySource(t, srv, fastConfig(), netip.Addr{}, newRecorder())
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if _, err := s.Acquire(ctx, holder(0)); !errors.Is(err, source.ErrExhausted) {
			t.Fatalf("acquire: %v", err)
		}
	})
}

func TestRelayLossyServer(t *testing.T) {
	t.Parallel()
	srv := loopServer(t, dhcpserver.Config{DropRate: 0.3, Seed: 7})
	s := relaySource(t, srv, fastConfig(), netip.Addr{}, newRecorder())
	var wg sync.WaitGroup
	errs := make([]error, 30)
	for i := range errs {
		wg.Go(func() { _, errs[i] = s.Acquire(context.Background(), holder(i)) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("holder %d: %v", i, err)
		}
	}
	if c, sc := s.Counters(), srv.Counters(); c.Retransmits == 0 || sc.Drops == 0 {
		t.Fatalf("counters %+v / server %+v: want drops and retransmissions", c, sc)
	}
}

func TestAcquireAfterClose(t *testing.T) {
	t.Parallel()
	srv := loopServer(t, dhcpserver.Config{})
	s := relaySource(t, srv, fastConfig(), netip.Addr{}, newRecorder())
	s.Close()
	if _, err := s.Acquire(context.Background(), holder(0)); !errors.Is(err, errClosed) {
		t.Fatalf("acquire after close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

// A holder found using an address although its lease record was lost
// (the start-up cross-check) is claimed: the source asks the server at
// once, with INIT-REBOOT under the holder's client id. The holder the
// server leased it to gets it back with the server's timers (Renewed); a
// claim for an address the server leased to another client is NAKed and
// Lost. Decline gives an address back as in use.
func TestRelayClaimAndDecline(t *testing.T) {
	t.Parallel()
	srv := loopServer(t, fastLease(time.Hour, 30*time.Minute, 50*time.Minute))
	relay := nextRelayIP()
	s1 := relaySource(t, srv, fastConfig(), relay, newRecorder())
	mine, theirs := acquire(t, s1, holder(0)), acquire(t, s1, holder(1))
	s1.Close() // the daemon dies, and its lease records are lost

	ev := newRecorder()
	s2 := relaySource(t, srv, fastConfig(), relay, ev)
	l, err := s2.Claim(holder(0), mine.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if l.Addr != mine.Addr || l.Holder != holder(0) {
		t.Fatalf("claimed lease %+v", l)
	}
	if _, err := parseState(l.State); err != nil {
		t.Fatalf("a claimed lease's state must survive a restart: %v", err)
	}
	if _, err := s2.Claim(holder(2), mine.Addr); err == nil {
		t.Fatal("a second holder claimed a claimed address")
	}
	// Holder 3 claims holder 1's address: not its client id's.
	if _, err := s2.Claim(holder(3), theirs.Addr); err != nil {
		t.Fatal(err)
	}
	ev.wait(t, 10*time.Second, "the server's answers", func(r []lease.Lease, lost []lostEvent) bool {
		return ev.renewedOfLocked(r, holder(0)) >= 1 && len(lost) >= 1
	})
	ev.mu.Lock()
	for _, r := range ev.renewed {
		if r.Holder == holder(0) && (r.Addr != mine.Addr || r.Expiry.Before(time.Now().Add(30*time.Minute))) {
			t.Errorf("renewed %+v: want %s with the server's hour", r, mine.Addr)
		}
	}
	if lo := ev.lost[0]; lo.holder != holder(3) || lo.addr != theirs.Addr {
		t.Errorf("lost %+v: want holder 3's claim of %s", lo, theirs.Addr)
	}
	ev.mu.Unlock()

	// An address found in use on this host is declined: the server
	// withholds it and offers another.
	got := acquire(t, s2, holder(4))
	s2.Decline(got, "address in use on this host")
	waitServer(t, srv, 5*time.Second, "the DECLINE", func(c dhcpserver.Counters, _ []dhcpserver.Lease) bool { return c.Declines == 1 })
	if d := srv.Declined(); len(d) != 1 || d[0] != got.Addr {
		t.Fatalf("server withholds %v, want %s", d, got.Addr)
	}
	if again := acquire(t, s2, holder(4)); again.Addr == got.Addr {
		t.Fatalf("offered the declined %s again", got.Addr)
	}
}
