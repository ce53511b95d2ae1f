package dhcp

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/sim/dhcpserver"
)

// A stock lease (acquired ahead for the kernel interceptor) is transferred
// to the session it was handed to. The server must see nothing change: the
// lease stays under the client id it was obtained with.

const testHostID = "test-host-id" // relaySource's

func stockHolder(i int) lease.Holder {
	return lease.Holder{Session: lease.Session{Kind: lease.KindStock, ID: uint32(i)}}
}

// clientKey is the server's table key for holder key k's own client id.
func clientKey(k string) string {
	return "id:" + hex.EncodeToString(ClientID([]byte(testHostID), k))
}

// cidKey is the server's table key for client id cid.
func cidKey(cid []byte) string { return "id:" + hex.EncodeToString(cid) }

// nakSessions is a server that NAKs every message under the session
// holders' own client ids: a renewal of a transferred lease sent under
// its new holder's id, not the stock one's, would lose the lease.
func nakSessions(cfg dhcpserver.Config, hs ...lease.Holder) dhcpserver.Config {
	for _, h := range hs {
		cfg.NAKClients = append(cfg.NAKClients, clientKey(h.Key()))
	}
	return cfg
}

// serverLease returns the server's lease on a, if any.
func serverLease(srv *dhcpserver.Server, a netip.Addr) (dhcpserver.Lease, bool) {
	for _, sl := range srv.Leases() {
		if sl.Addr == a {
			return sl, true
		}
	}
	return dhcpserver.Lease{}, false
}

func stateClientID(t *testing.T, l lease.Lease) []byte {
	t.Helper()
	st, err := parseState(l.State)
	if err != nil {
		t.Fatalf("lease %s of %s: %v", l.Addr, l.Holder, err)
	}
	return st.ClientID
}

func TestRelayTransferRenewRelease(t *testing.T) {
	t.Parallel()
	stk, sess := stockHolder(1), holder(0)
	srv := loopServer(t, nakSessions(fastLease(4*time.Second, time.Second, 3*time.Second), sess))
	ev := newRecorder()
	s := relaySource(t, srv, fastConfig(), netip.Addr{}, ev)
	l := acquire(t, s, stk)
	stockCID := stateClientID(t, l)
	if !bytes.Equal(s.ClientID(stk), stockCID) || bytes.Equal(s.ClientID(sess), stockCID) {
		t.Fatal("before the transfer, each holder's client id is its own")
	}
	if bytes.Equal(stockCID, ClientID([]byte(testHostID), stk.Key())) {
		t.Fatal("a stock place acquired under the id derived from its key alone: its refill would ask as the same client")
	}
	tl, err := s.Transfer(l, sess)
	if err != nil {
		t.Fatal(err)
	}
	if tl.Holder != sess || tl.Addr != l.Addr || tl.Subnet != l.Subnet || !tl.Expiry.Equal(l.Expiry) ||
		tl.Source != Name || !bytes.Equal(tl.State, l.State) {
		t.Fatalf("transferred lease %+v, from %+v: want the same lease under %s", tl, l, sess)
	}
	if cid := stateClientID(t, tl); !bytes.Equal(cid, stockCID) {
		t.Fatalf("transferred state carries client id %x, want the stock holder's %x", cid, stockCID)
	}
	if !bytes.Equal(s.ClientID(sess), stockCID) {
		t.Fatalf("ClientID(%s) = %x, want the lease's %x", sess, s.ClientID(sess), stockCID)
	}
	if st := s.Stats(); st.Used != 1 {
		t.Fatalf("stats %+v: want the one lease", st)
	}
	// The stock place holds nothing now, and the session holds one.
	if _, err := s.Transfer(l, holder(5)); err == nil {
		t.Fatal("transferred the lease a second time from the stock holder")
	}
	other := acquire(t, s, holder(1))
	discovers := srv.Counters().Discovers
	if _, err := s.Transfer(tl, holder(1)); err == nil {
		t.Fatalf("transferred to %s, which holds %s", holder(1), other.Addr)
	}
	if !bytes.Equal(s.ClientID(sess), stockCID) || !bytes.Equal(s.ClientID(holder(5)), ClientID([]byte(testHostID), holder(5).Key())) {
		t.Fatal("a failed transfer changed a client id")
	}

	// Renewals (T1 1s) go on under the stock client id, for the session.
	ev.wait(t, 15*time.Second, "two renewals of the transferred lease", func(r []lease.Lease, _ []lostEvent) bool {
		return ev.renewedOfLocked(r, sess) >= 2
	})
	ev.mu.Lock()
	var last lease.Lease
	for _, r := range ev.renewed {
		switch {
		case r.Addr != l.Addr:
			continue // holder 1's
		case r.Holder != sess:
			t.Errorf("renewal event %+v names %s, want %s", r, r.Holder, sess)
		case !bytes.Equal(stateClientID(t, r), stockCID):
			t.Errorf("renewed state carries client id %x, want %x", stateClientID(t, r), stockCID)
		case !r.Expiry.After(l.Expiry) || !r.Granted.Equal(l.Granted):
			t.Errorf("renewed %+v, from %+v: want a later expiry, same granted time", r, l)
		}
		last = r
	}
	if len(ev.lost) != 0 {
		t.Errorf("lost %v", ev.lost)
	}
	ev.mu.Unlock()
	sl, ok := serverLease(srv, l.Addr)
	if !ok || sl.Client != cidKey(stockCID) || !sl.Expiry.After(l.Expiry) {
		t.Fatalf("server lease on %s: %+v (%v); want it renewed for the stock client %s", l.Addr, sl, ok, cidKey(stockCID))
	}
	if sc := srv.Counters(); sc.Naks != 0 || sc.Renewals < 2 || sc.Discovers != discovers || len(srv.Leases()) != 2 {
		t.Fatalf("server counters %+v, %d leases: want renewals, no NAK, no new DISCOVER, two leases", sc, len(srv.Leases()))
	}

	// Release tells the server under the stock client id: the server
	// counts a RELEASE only from the client holding the address.
	s.Release(last)
	waitServer(t, srv, 5*time.Second, "RELEASE", func(c dhcpserver.Counters, ls []dhcpserver.Lease) bool {
		return c.Releases == 1 && len(ls) == 1
	})
	if _, ok := serverLease(srv, l.Addr); ok {
		t.Fatalf("released %s still leased on the server", l.Addr)
	}
	if st := s.Stats(); st.Used != 1 {
		t.Fatalf("stats %+v after release: want holder 1's lease only", st)
	}
	if !bytes.Equal(s.ClientID(sess), ClientID([]byte(testHostID), sess.Key())) {
		t.Fatal("after the release, the session's client id is its own again")
	}
}

// After a restart the transferred lease, as persisted, is adopted and
// renewed under the stock client id; one that expired while the daemon was
// down is asked back (INIT-REBOOT) under it too.
func TestRelayTransferAdopt(t *testing.T) {
	t.Parallel()
	sess, expSess := holder(0), holder(1)
	srv := loopServer(t, nakSessions(fastLease(6*time.Second, time.Second, 5*time.Second), sess, expSess))
	relay := nextRelayIP()
	s1 := relaySource(t, srv, fastConfig(), relay, newRecorder())
	var moved [2]lease.Lease
	var stockCID [2][]byte
	for i, to := range []lease.Holder{sess, expSess} {
		l := acquire(t, s1, stockHolder(i))
		stockCID[i] = stateClientID(t, l)
		var err error
		if moved[i], err = s1.Transfer(l, to); err != nil {
			t.Fatal(err)
		}
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	discovers := srv.Counters().Discovers

	// Pretend the second lease ran out while the daemon was down (the
	// server still holds it for the stock client: a REQUEST under the
	// session's id would be NAKed).
	expired := moved[1]
	st, err := parseState(expired.State)
	if err != nil {
		t.Fatal(err)
	}
	st.Bound = st.Bound.Add(-time.Minute)
	expired.State, expired.Expiry = st.marshal(), st.expiry()

	ev := newRecorder()
	s2 := relaySource(t, srv, fastConfig(), relay, ev)
	for _, pl := range []lease.Lease{moved[0], expired} {
		if err := s2.Adopt(pl); err != nil {
			t.Fatal(err)
		}
	}
	for i, h := range []lease.Holder{sess, expSess} {
		if want := stockCID[i]; !bytes.Equal(s2.ClientID(h), want) {
			t.Fatalf("adopted: ClientID(%s) = %x, want the stock one %x", h, s2.ClientID(h), want)
		}
	}
	ev.wait(t, 10*time.Second, "renewal of both adopted leases", func(r []lease.Lease, _ []lostEvent) bool {
		return ev.renewedOfLocked(r, sess) >= 1 && ev.renewedOfLocked(r, expSess) >= 1
	})
	ev.mu.Lock()
	for _, r := range ev.renewed {
		if (r.Holder == sess && r.Addr != moved[0].Addr) || (r.Holder == expSess && r.Addr != moved[1].Addr) {
			t.Errorf("renewed %+v: address changed", r)
		}
	}
	if len(ev.lost) != 0 {
		t.Errorf("lost %v", ev.lost)
	}
	ev.mu.Unlock()
	if c := s2.Counters(); c.Reboots != 1 || c.Renewals < 1 || c.Naks != 0 {
		t.Fatalf("counters %+v: want one INIT-REBOOT and a renewal, no NAK", c)
	}
	if sc := srv.Counters(); sc.Naks != 0 || sc.Discovers != discovers {
		t.Fatalf("server counters %+v: want no NAK and no DISCOVER after the restart", sc)
	}
	for i, m := range moved {
		sl, ok := serverLease(srv, m.Addr)
		if !ok || sl.Client != cidKey(stockCID[i]) || !sl.Expiry.After(m.Expiry) {
			t.Errorf("server lease on %s: %+v (%v); want it renewed for %s", m.Addr, sl, ok, cidKey(stockCID[i]))
		}
	}
}

// Transfer fails, changing nothing and sending nothing, unless the lease
// is its holder's and the target holds none.
func TestRelayTransferRefused(t *testing.T) {
	t.Parallel()
	srv := loopServer(t, dhcpserver.Config{})
	ev := newRecorder()
	s := relaySource(t, srv, fastConfig(), netip.Addr{}, ev)
	l := acquire(t, s, stockHolder(1))
	busy := acquire(t, s, holder(1))
	released := acquire(t, s, stockHolder(2))
	s.Release(released)
	waitServer(t, srv, 5*time.Second, "RELEASE", func(c dhcpserver.Counters, _ []dhcpserver.Lease) bool { return c.Releases == 1 })
	received := srv.Counters().Received

	for _, tc := range []struct {
		name string
		l    lease.Lease
		to   lease.Holder
	}{
		{"holder holds nothing", func() lease.Lease { x := l; x.Holder = stockHolder(9); return x }(), holder(0)},
		{"holder released it", released, holder(0)},
		{"holder holds another address", func() lease.Lease { x := l; x.Addr = busy.Addr; return x }(), holder(0)},
		{"target holds one", l, holder(1)},
		{"to itself", l, stockHolder(1)},
	} {
		if got, err := s.Transfer(tc.l, tc.to); err == nil {
			t.Errorf("%s: Transfer(%s of %s to %s) = %+v, want an error", tc.name, tc.l.Addr, tc.l.Holder, tc.to, got)
		}
	}
	if st := s.Stats(); st.Used != 2 {
		t.Fatalf("stats %+v: want the two leases", st)
	}
	for h, held := range map[lease.Holder]lease.Lease{stockHolder(1): l, holder(1): busy} {
		if got := acquire(t, s, h); got.Addr != held.Addr { // held: answered from the binding
			t.Errorf("%s holds %s, want %s", h, got.Addr, held.Addr)
		}
		if !bytes.Equal(s.ClientID(h), stateClientID(t, held)) {
			t.Errorf("ClientID(%s) changed", h)
		}
	}
	if sc := srv.Counters(); sc.Received != received {
		t.Fatalf("server received %d messages during refused transfers", sc.Received-received)
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.renewed) != 0 || len(ev.lost) != 0 {
		t.Fatalf("events during refused transfers: renewed %v, lost %v", ev.renewed, ev.lost)
	}
}

// A lease passed along a chain of holders while its renewals are in flight
// (the server answers late) keeps one maintainer and one client id: no
// NAK, nothing lost, and the renewals after the last transfer name the
// last holder.
func TestRelayTransferDuringRenewal(t *testing.T) {
	t.Parallel()
	const n = 20
	var chain []lease.Holder
	for i := range n {
		chain = append(chain, lease.Holder{Session: holder(i).Session, Program: fmt.Sprintf("/usr/bin/p%d", i)})
	}
	cfg := nakSessions(fastLease(10*time.Second, time.Second, 8*time.Second), chain...)
	cfg.Latency = 300 * time.Millisecond
	srv := loopServer(t, cfg)
	ev := newRecorder()
	ccfg := fastConfig()
	ccfg.RetransmitBase = time.Second // how long a renewal waits for its late answer
	s := relaySource(t, srv, ccfg, netip.Addr{}, ev)
	stk := stockHolder(1)
	l := acquire(t, s, stk)
	stockCID := stateClientID(t, l)
	discovers := srv.Counters().Discovers

	// T1 is 1s: renewals start then, each answered 300ms late.
	waitServer(t, srv, 5*time.Second, "a renewal REQUEST", func(c dhcpserver.Counters, _ []dhcpserver.Lease) bool {
		return c.Requests >= 2
	})
	cur := l
	for _, to := range chain {
		var err error
		if cur, err = s.Transfer(cur, to); err != nil {
			t.Fatal(err)
		}
		time.Sleep(70 * time.Millisecond)
	}
	final := chain[n-1]
	if st := s.Stats(); st.Used != 1 || !bytes.Equal(s.ClientID(final), stockCID) {
		t.Fatalf("stats %+v, ClientID(%s) %x: want one lease under the stock client id %x", st, final, s.ClientID(final), stockCID)
	}
	ev.mu.Lock()
	seen := len(ev.renewed)
	ev.mu.Unlock()
	ev.wait(t, 10*time.Second, "two renewals after the last transfer", func(r []lease.Lease, _ []lostEvent) bool {
		return ev.renewedOfLocked(r[seen:], final) >= 2 || len(ev.lost) > 0
	})
	ev.mu.Lock()
	for _, r := range ev.renewed[seen:] {
		if r.Holder != final || r.Addr != l.Addr {
			t.Errorf("renewed %+v after the last transfer: want %s of %s", r, l.Addr, final)
		}
	}
	for _, lo := range ev.lost {
		t.Errorf("lost %s of %s: %v", lo.addr, lo.holder, lo.reason)
	}
	ev.mu.Unlock()
	if sc := srv.Counters(); sc.Naks != 0 || sc.Discovers != discovers || len(srv.Leases()) != 1 {
		t.Fatalf("server counters %+v, leases %v: want the one lease renewed, no NAK", sc, srv.Leases())
	}
	if sl, _ := serverLease(srv, l.Addr); sl.Client != cidKey(stockCID) {
		t.Fatalf("server lease %+v: want the stock client %s", sl, cidKey(stockCID))
	}
}

// A stock place is refilled after its lease went to a session: the refill
// is a client of its own to the server. Under the id derived from the
// place's key it was the same client as the session's lease: the server
// offered the session's address again, the source declined it as held by
// another holder, and the server dropped the session's lease.
func TestRelayStockPlaceRefilled(t *testing.T) {
	t.Parallel()
	srv := loopServer(t, fastLease(4*time.Second, time.Second, 3*time.Second))
	ev := newRecorder()
	s := relaySource(t, srv, fastConfig(), netip.Addr{}, ev)
	stk, sess := stockHolder(0), holder(0)
	l := acquire(t, s, stk)
	first := stateClientID(t, l)
	tl, err := s.Transfer(l, sess)
	if err != nil {
		t.Fatal(err)
	}
	refill := acquire(t, s, stk)
	if refill.Addr == l.Addr || bytes.Equal(stateClientID(t, refill), first) {
		t.Fatalf("the refill got %s under %x; the session holds %s under %x", refill.Addr, stateClientID(t, refill), l.Addr, first)
	}
	if c := srv.Counters(); c.Declines != 0 {
		t.Fatalf("server counters %+v: the refill declined an address", c)
	}
	// Both leases stand at the server, each under its own client, and the
	// session's renews.
	ev.wait(t, 10*time.Second, "a renewal of the session's lease", func(r []lease.Lease, lost []lostEvent) bool {
		return ev.renewedOfLocked(r, sess) >= 1 || len(lost) > 0
	})
	for _, want := range []lease.Lease{tl, refill} {
		if sl, ok := serverLease(srv, want.Addr); !ok || sl.Client != cidKey(stateClientID(t, want)) {
			t.Fatalf("server lease on %s: %+v (%v), want it under %s", want.Addr, sl, ok, cidKey(stateClientID(t, want)))
		}
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if len(ev.lost) != 0 {
		t.Fatalf("lost %v", ev.lost)
	}
}
