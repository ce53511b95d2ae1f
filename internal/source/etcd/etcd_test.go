package etcd

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source"
)

// Three hosts take 75 addresses from a 60-address pool at once: exactly 60
// are granted, no address twice across the farm, the rest exhausted; the
// farm listing names each address's host.
func TestFarmNeverSharesAnAddress(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	var hosts []*Source
	for _, name := range []string{"sh1", "sh2", "sh3"} {
		s, _ := host(t, c.endpoint, name, "", 10*time.Second, nil)
		hosts = append(hosts, s)
	}
	var mu sync.Mutex
	got := map[netip.Addr]string{}
	exhausted := 0
	var wg sync.WaitGroup
	for hi, s := range hosts {
		for i := range 25 {
			wg.Go(func() {
				l, err := s.Acquire(source.WithUser(context.Background(), 4000), holder(hi*100+i))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case errors.Is(err, source.ErrExhausted):
					exhausted++
					t.Log(err)
				case err != nil:
					t.Errorf("acquire: %v", err)
				default:
					if other, dup := got[l.Addr]; dup {
						t.Errorf("%s granted to %s and %s", l.Addr, other, s.host)
					}
					got[l.Addr] = s.host
				}
			})
		}
	}
	wg.Wait()
	if len(got) != 60 || exhausted != 15 {
		t.Fatalf("%d granted, %d exhausted: want 60 and 15", len(got), exhausted)
	}
	farm, err := hosts[0].Farm(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(farm) != 60 {
		t.Fatalf("farm lists %d VIPs, want 60", len(farm))
	}
	for _, f := range farm {
		if f.Bad != "" || f.Host != got[f.Addr] || f.UID != 4000 || f.Since.IsZero() {
			t.Fatalf("farm entry %+v: want host %s, uid 4000, a since", f, got[f.Addr])
		}
	}
	// A release frees the address for any host.
	var l lease.Lease
	for a, h := range got {
		if h == "sh1" {
			l = lease.Lease{Addr: a}
			break
		}
	}
	for hold, a := range hosts[0].heldCopy() {
		if a == l.Addr {
			l.Holder = hold
		}
	}
	hosts[0].Release(l)
	waitFor(t, 5*time.Second, "the released key to go", func() bool {
		f, _ := hosts[1].Farm(context.Background())
		return len(f) == 59
	})
	if l2, err := hosts[1].Acquire(context.Background(), holder(999)); err != nil || l2.Addr != l.Addr {
		t.Fatalf("after the release host 2 got %v %v, want %s", l2.Addr, err, l.Addr)
	}
}

// A host cut off from etcd withdraws every VIP before its lease (lease_ttl)
// can run out at the cluster, answers exhausted while cut off, and once back gets
// its holders' addresses again where no other host took them meanwhile.
// Another host takes the cut-off host's addresses only after the TTL.
func TestPartitionedHostFencesItself(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	const ttl = 3 * time.Second
	lk := newLink(t, c.endpoint)
	ev := newEvents()
	a, _ := host(t, lk.Endpoint, "sh-a", "", ttl, ev)
	b, _ := host(t, c.endpoint, "sh-b", "", ttl, nil)
	var mine []lease.Lease
	for i := range 5 {
		l, err := a.Acquire(context.Background(), holder(i))
		if err != nil {
			t.Fatal(err)
		}
		mine = append(mine, l)
	}
	// The last renewal sent before the cut bounds when the cluster can
	// expire the lease: ttl after it, and it was sent before this instant.
	cut := time.Now()
	lk.partition(true)
	waitFor(t, 2*ttl, "the cut-off host to withdraw its VIPs", func() bool { return ev.lostCount() == len(mine) })
	for addr, at := range ev.lost {
		if !at.Before(cut.Add(ttl)) {
			t.Fatalf("%s withdrawn %s after the cut: the cluster may have expired it %s after", addr, at.Sub(cut), ttl)
		}
	}
	if _, err := a.Acquire(context.Background(), holder(50)); !errors.Is(err, source.ErrExhausted) {
		t.Fatalf("a fenced host acquired: %v", err)
	}
	if st := a.Stats(); st.Healthy {
		t.Fatalf("fenced host reports healthy: %+v", st)
	}
	// The other host gets one of them once the lease ran out.
	taken := mine[0].Addr
	waitFor(t, 3*ttl, "the cut-off host's keys to expire", func() bool {
		f, _ := b.Farm(context.Background())
		return len(f) == 0
	})
	if ok, err := b.take(context.Background(), b.leaseID, taken, holder(77), b.record(holder(77), 1)); err != nil || !ok {
		t.Fatalf("the other host could not take %s after the TTL: %v %v", taken, ok, err)
	}
	lk.partition(false)
	waitFor(t, 3*ttl, "the host to answer again", func() bool { return a.Stats().Healthy })
	for i, l := range mine {
		got, err := a.Acquire(context.Background(), holder(i))
		if err != nil {
			t.Fatal(err)
		}
		if l.Addr == taken {
			// Unless the other host was fenced meanwhile (a loaded
			// machine can starve its renewals too) and its key expired.
			if _, held := b.heldCopy()[holder(77)]; got.Addr == taken && held && b.Stats().Healthy {
				t.Fatalf("holder %d got %s back although another host holds it", i, taken)
			}
			continue
		}
		if got.Addr != l.Addr {
			t.Fatalf("holder %d got %s, had %s (still free)", i, got.Addr, l.Addr)
		}
	}
}

// A daemon killed and restarted within the TTL takes its lease back: every
// key stays its own, adopted again, and no other host can take them.
func TestRestartWithinTTLKeepsVIPs(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	a, state := host(t, c.endpoint, "sh-a", "", 10*time.Second, nil)
	var mine []lease.Lease
	for i := range 3 {
		l, err := a.Acquire(context.Background(), holder(i))
		if err != nil {
			t.Fatal(err)
		}
		mine = append(mine, l)
	}
	a.cancel() // as SIGKILL: no revocation, no release
	a.wg.Wait()
	a2, _ := host(t, c.endpoint, "sh-a", state, 10*time.Second, nil)
	if a2.leaseID != a.leaseID {
		t.Fatalf("restarted with lease %x, had %x", a2.leaseID, a.leaseID)
	}
	for _, l := range mine {
		if err := a2.Adopt(l); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := host(t, c.endpoint, "sh-b", "", 10*time.Second, nil)
	for _, l := range mine {
		if ok, err := b.take(context.Background(), b.leaseID, l.Addr, holder(9), b.record(holder(9), 1)); err != nil || ok {
			t.Fatalf("another host took %s: %v %v", l.Addr, ok, err)
		}
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A host that starts while etcd is out of reach starts fenced (New does not
// wait for the cluster) and serves once it answers.
func TestStartPartitioned(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	lk := newLink(t, c.endpoint)
	lk.partition(true)
	a, _ := host(t, lk.Endpoint, "sh-a", "", 3*time.Second, nil)
	if _, err := a.Acquire(context.Background(), holder(1)); !errors.Is(err, source.ErrExhausted) {
		t.Fatalf("acquire while partitioned: %v", err)
	}
	lk.partition(false)
	waitFor(t, 10*time.Second, "the host to get a lease", func() bool { return a.Stats().Healthy })
	if _, err := a.Acquire(context.Background(), holder(1)); err != nil {
		t.Fatal(err)
	}
}
