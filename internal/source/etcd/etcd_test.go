package etcd

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source"
	"github.com/ipvirt/ipvirt/internal/testenv"
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

// stock is a stock place's holder: a lease acquired ahead for the kernel
// interceptor to hand out.
func stock(i int) lease.Holder {
	return lease.Holder{Session: lease.Session{Kind: lease.KindStock, ID: uint32(i)}}
}

// farmEntry is a's entry in the farm listing as s reads it (ipvirtctl
// sessions --farm), and whether there is one.
func farmEntry(t *testing.T, s *Source, a netip.Addr) (FarmLease, bool) {
	t.Helper()
	farm, err := s.Farm(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range farm {
		if f.Addr == a {
			return f, true
		}
	}
	return FarmLease{}, false
}

// A stock lease passes to the session it was handed to: one transaction
// rewrites its record, which the farm listing then shows (host, new
// holder, the session's user, since the transfer). A transfer fails,
// changing nothing, when the host no longer holds the lease for that
// holder, when the record changed behind its back, or when the new holder
// already has an address; the new holder's release frees the address.
func TestTransfer(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	a, _ := host(t, c.endpoint, "sh-a", "", 10*time.Second, nil)
	b, _ := host(t, c.endpoint, "sh-b", "", 10*time.Second, nil)
	l, err := a.Acquire(context.Background(), stock(1))
	if err != nil {
		t.Fatal(err)
	}
	if f, _ := farmEntry(t, b, l.Addr); f.Holder != "s:1" || f.Host != "sh-a" {
		t.Fatalf("stock lease listed as %+v", f)
	}
	before := time.Now().Truncate(time.Second)
	sess := holder(1)
	l.UID = 4000 // the session's user, as the daemon passes it
	got, err := a.Transfer(l, sess)
	if err != nil {
		t.Fatal(err)
	}
	if got.Holder != sess || got.Addr != l.Addr || got.Subnet != l.Subnet || got.Source != Name {
		t.Fatalf("transferred lease %+v", got)
	}
	if held := a.heldCopy(); held[sess] != l.Addr || len(held) != 1 {
		t.Fatalf("after the transfer the host holds %v, want %s for %s alone", held, l.Addr, sess)
	}
	// Every host's listing (ipvirtctl sessions --farm) names the session.
	for _, s := range []*Source{a, b} {
		f, ok := farmEntry(t, s, l.Addr)
		if !ok || f.Bad != "" || f.Holder != sess.Key() || f.Host != "sh-a" || f.HostID != a.hostID || f.UID != 4000 || f.Since.Before(before) {
			t.Fatalf("%s lists %s as %+v (present %v): want holder %s of sh-a, uid 4000, since %s or later", s.host, l.Addr, f, ok, sess, before)
		}
	}

	// The stock place no longer holds it: a second transfer from it fails.
	if _, err := a.Transfer(l, holder(2)); err == nil {
		t.Fatal("a lease the stock place no longer holds was transferred again")
	}
	// Another host cannot transfer a lease it does not hold.
	if _, err := b.Transfer(got, holder(3)); err == nil {
		t.Fatal("another host transferred a lease it does not hold")
	}
	if f, _ := farmEntry(t, b, l.Addr); f.Holder != sess.Key() {
		t.Fatalf("failed transfers changed the record: %+v", f)
	}

	// The new holder already holds an address.
	l2, err := a.Acquire(context.Background(), stock(2))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Transfer(l2, sess); err == nil {
		t.Fatal("transferred to a holder that already holds an address")
	}

	// The record changed behind the host's back (written under its
	// lease, naming someone else): the compare fails, nothing changes.
	cli := rawClient(t, c.endpoint)
	key := vipKey(a.cfg.Prefix, l2.Addr)
	forged := `{"host":"sh-a","host_id":"` + a.hostID + `","holder":"a:4242","uid":0,"since":"2020-01-01T00:00:00Z"}`
	if _, err := cli.Put(context.Background(), key, forged, clientv3.WithLease(a.leaseID)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Transfer(l2, holder(4)); err == nil {
		t.Fatal("transferred a lease whose record changed behind the host's back")
	}
	if f, _ := farmEntry(t, b, l2.Addr); f.Holder != "a:4242" {
		t.Fatalf("a failed transfer wrote the record: %+v", f)
	}
	if held := a.heldCopy(); held[stock(2)] != l2.Addr || held[holder(4)].IsValid() {
		t.Fatalf("a failed transfer changed what the host holds: %v", held)
	}

	// Released, the lease cannot be transferred; the key goes.
	a.Release(got)
	waitFor(t, 5*time.Second, "the released key to go", func() bool {
		_, ok := farmEntry(t, b, l.Addr)
		return !ok
	})
	if _, err := a.Transfer(got, holder(5)); err == nil {
		t.Fatal("a released lease was transferred")
	}
	if _, ok := farmEntry(t, b, l.Addr); ok {
		t.Fatal("a transfer of a released lease wrote its key again")
	}
}

// A transfer the cluster does not answer (its member frozen) fails and
// leaves the host's view as it was; once the cluster answers again the
// next transfer of the lease succeeds, whether the unanswered one was
// applied after the thaw or not, and the record names its holder.
func TestTransferWithoutAnswer(t *testing.T) {
	t.Parallel()
	endpoint, signal := testenv.StartEtcdStoppable(t)
	a, _ := host(t, endpoint, "sh-a", "", 10*time.Second, nil)
	l, err := a.Acquire(context.Background(), stock(1))
	if err != nil {
		t.Fatal(err)
	}
	signal(syscall.SIGSTOP)
	_, err = a.Transfer(l, holder(1))
	signal(syscall.SIGCONT)
	if err == nil {
		t.Fatal("a transfer succeeded with etcd frozen")
	}
	if held := a.heldCopy(); held[stock(1)] != l.Addr || len(held) != 1 {
		t.Fatalf("an unanswered transfer changed what the host holds: %v", held)
	}
	// Nor did the write-back that settles it get an answer: the record is
	// in doubt, and the next transfer writes the host's back first.
	a.mu.Lock()
	doubt := a.keys[l.Addr].mod == 0
	a.mu.Unlock()
	if !doubt {
		t.Fatal("the record of an unanswered transfer is not marked in doubt")
	}
	var got lease.Lease
	waitFor(t, 10*time.Second, "a transfer once etcd answers", func() bool {
		got, err = a.Transfer(l, holder(2))
		return err == nil
	})
	if got.Holder != holder(2) || a.heldCopy()[holder(2)] != l.Addr {
		t.Fatalf("transferred lease %+v, host holds %v", got, a.heldCopy())
	}
	if f, ok := farmEntry(t, a, l.Addr); !ok || f.Holder != holder(2).Key() {
		t.Fatalf("the record is %+v (present %v), want holder %s", f, ok, holder(2))
	}
}

// rawClient is a client of the test's own, as another program writing
// under the prefix.
func rawClient(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
