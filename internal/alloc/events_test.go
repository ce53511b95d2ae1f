package alloc

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
)

// recorder is an Observer that keeps what it was told.
type recorder struct{ granted, released []lease.Lease }

func (r *recorder) Granted(l lease.Lease)  { r.granted = append(r.granted, l) }
func (r *recorder) Released(l lease.Lease) { r.released = append(r.released, l) }

// TestSourceEvents drives the source-facing API (what the DHCP source calls
// on renewals and expiries) and checks the store, the observers and the
// next answer.
func TestSourceEvents(t *testing.T) {
	f := newFixture(t)
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	d := startDaemon(t, t.TempDir(), f, clk, Settings{Policy: policy.Settings{Enabled: true, Mode: policy.PerSession},
		OnExhausted: ExhaustedMachineIP, Grace: time.Second})
	defer d.store.Close()
	rec := &recorder{}
	d.m.AddObserver(rec)

	c := caller(7)
	a := d.m.Query(context.Background(), c)
	if a.Kind != wire.KindVIP || len(rec.granted) != 1 {
		t.Fatalf("first query: %+v, observers told %d grants", a, len(rec.granted))
	}
	h := a.Holder

	// A renewal moves the expiry and is persisted; the answer's TTL follows.
	renewed := a.Lease
	renewed.Expiry = clk.Now().Add(40 * time.Second)
	renewed.State = []byte("server=192.0.2.1")
	d.m.Renewed(renewed)
	got, _ := d.m.Lease(h)
	if !got.Expiry.Equal(renewed.Expiry) || string(got.State) != "server=192.0.2.1" || got.UID != a.Lease.UID {
		t.Fatalf("after Renewed: %+v", got)
	}
	stored, _ := d.store.Leases()
	if len(stored) != 1 || !stored[0].Expiry.Equal(renewed.Expiry) {
		t.Fatalf("store after Renewed: %+v", stored)
	}
	if ttl := d.m.Query(context.Background(), c).TTL; ttl != 20*time.Second {
		t.Fatalf("TTL %s with 40s left on the lease, want half of it", ttl)
	}

	// A renewal for another address is not this lease's: ignored.
	other := renewed
	other.Addr = netip.MustParseAddr("127.77.0.99")
	d.m.Renewed(other)
	if got, _ := d.m.Lease(h); got.Addr != a.Lease.Addr {
		t.Fatal("a renewal for another address replaced the lease")
	}

	// Lost withdraws the VIP: observers, store; the next query re-acquires.
	d.m.Lost(h, netip.MustParseAddr("127.77.0.99"), errors.New("wrong address"))
	if _, ok := d.m.Lease(h); !ok {
		t.Fatal("Lost for an address the holder does not have withdrew its lease")
	}
	d.m.Lost(h, a.Lease.Addr, errors.New("expired"))
	if _, ok := d.m.Lease(h); ok || len(rec.released) != 1 {
		t.Fatalf("after Lost: lease still there or observers not told (%d)", len(rec.released))
	}
	d.store.SetMeta("flush", []byte("x")) // commits after the queued delete
	if stored, _ := d.store.Leases(); len(stored) != 0 {
		t.Fatalf("store after Lost: %+v", stored)
	}
	if c := d.m.Counters(); c.Releases[ReleaseLost] != 1 {
		t.Fatalf("releases counted: %v", c.Releases)
	}
	if again := d.m.Query(context.Background(), c); again.Kind != wire.KindVIP {
		t.Fatalf("after Lost, the holder's next query got %+v", again)
	}
}
