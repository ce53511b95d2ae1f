package static

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"reflect"
	"testing"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source"
)

func poolOf(start, end string) Config {
	return Config{Start: netip.MustParseAddr(start), End: netip.MustParseAddr(end),
		SubnetMask: netip.MustParseAddr("255.255.255.0")}
}

func holder(id uint32) lease.Holder {
	return lease.Holder{Session: lease.Session{Kind: lease.KindAudit, ID: id}}
}

func TestAcquireUntilExhausted(t *testing.T) {
	s, err := New(poolOf("10.0.0.10", "10.0.0.11"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	l1, err1 := s.Acquire(ctx, holder(1))
	l2, err2 := s.Acquire(ctx, holder(2))
	if err1 != nil || err2 != nil || l1.Addr == l2.Addr {
		t.Fatalf("got %v %v / %v %v", l1.Addr, err1, l2.Addr, err2)
	}
	if l1.Subnet != netip.MustParsePrefix("10.0.0.0/24") || l1.Mask().String() != "255.255.255.0" || l1.Source != "static" {
		t.Fatalf("lease fields: %+v", l1)
	}
	_, err = s.Acquire(ctx, holder(3))
	if !errors.Is(err, source.ErrExhausted) {
		t.Fatalf("third acquire: %v, want ErrExhausted", err)
	}
	s.Release(l1)
	if st := s.Stats(); st.Used != 1 || st.Size != 2 || !st.Healthy {
		t.Fatalf("stats %+v", st)
	}
	l3, err := s.Acquire(ctx, holder(3))
	if err != nil || l3.Addr != l1.Addr {
		t.Fatalf("after release got %v %v, want %s", l3.Addr, err, l1.Addr)
	}
}

func TestReleaseByWrongHolderIsIgnored(t *testing.T) {
	s, _ := New(poolOf("10.0.0.10", "10.0.0.10"))
	l, _ := s.Acquire(context.Background(), holder(1))
	s.Release(lease.Lease{Holder: holder(2), Addr: l.Addr})
	if s.Free() != 0 {
		t.Fatal("a release by a holder that does not hold the address freed it")
	}
}

func TestAdoptConflicts(t *testing.T) {
	s, _ := New(poolOf("10.0.0.10", "10.0.0.20"))
	a := netip.MustParseAddr("10.0.0.15")
	if err := s.Adopt(lease.Lease{Holder: holder(1), Addr: a}); err != nil {
		t.Fatal(err)
	}
	if err := s.Adopt(lease.Lease{Holder: holder(1), Addr: a}); err != nil {
		t.Fatalf("re-adopting the same lease: %v", err)
	}
	if err := s.Adopt(lease.Lease{Holder: holder(2), Addr: a}); err == nil {
		t.Fatal("adopted one address for two holders")
	}
	for i := 0; i < 10; i++ {
		l, err := s.Acquire(context.Background(), holder(uint32(10+i)))
		if err != nil || l.Addr == a {
			t.Fatalf("acquire %d: %v %v (adopted address handed out again?)", i, l.Addr, err)
		}
	}
}

func TestReconfigureKeepsStranded(t *testing.T) {
	s, _ := New(poolOf("10.0.0.10", "10.0.0.12"))
	ctx := context.Background()
	l1, _ := s.Acquire(ctx, holder(1)) // .10
	l2, _ := s.Acquire(ctx, holder(2)) // .11
	stranded, err := s.Reconfigure(poolOf("10.0.0.11", "10.0.0.13").Range())
	if err != nil {
		t.Fatal(err)
	}
	if len(stranded) != 1 || stranded[0] != l1.Addr {
		t.Fatalf("stranded %v, want [%s]", stranded, l1.Addr)
	}
	if st := s.Stats(); st.Used != 1 || st.Size != 3 {
		t.Fatalf("stats %+v: want 1 of 3 in-range addresses used (the stranded one is not counted)", st)
	}
	// .11 is held in the new range too: only .12 and .13 are free.
	got := map[netip.Addr]bool{}
	for i := 0; i < 2; i++ {
		l, err := s.Acquire(ctx, holder(uint32(3+i)))
		if err != nil {
			t.Fatal(err)
		}
		got[l.Addr] = true
	}
	if got[l2.Addr] || got[l1.Addr] {
		t.Fatalf("reconfigured pool handed out a held address: %v", got)
	}
	s.Release(l1) // stranded: returns to nobody
	if _, err := s.Acquire(ctx, holder(9)); !errors.Is(err, source.ErrExhausted) {
		t.Fatalf("a stranded address came back into the new pool: %v", err)
	}
}

// heldMap is who holds what, as a map to compare.
func heldMap(s *Source) map[netip.Addr]lease.Holder { return maps.Collect(s.held.all()) }

func stock(id uint32) lease.Holder {
	return lease.Holder{Session: lease.Session{Kind: lease.KindStock, ID: id}}
}

func TestTransfer(t *testing.T) {
	ctx := context.Background()
	prog := lease.Holder{Session: holder(2).Session, Program: "/usr/bin/psql"}
	for _, tc := range []struct {
		name string
		// setup acquires what the case needs and returns the lease to
		// transfer (its Holder is who claims to hold it).
		setup func(t *testing.T, s *Source) lease.Lease
		to    lease.Holder
		ok    bool
	}{
		{"stock to session", func(t *testing.T, s *Source) lease.Lease {
			l, _ := s.Acquire(ctx, stock(1))
			return l
		}, holder(1), true},
		{"stock to program", func(t *testing.T, s *Source) lease.Lease {
			l, _ := s.Acquire(ctx, stock(1))
			return l
		}, prog, true},
		{"stranded address", func(t *testing.T, s *Source) lease.Lease {
			l, _ := s.Acquire(ctx, stock(1)) // .10
			if _, err := s.Reconfigure(poolOf("10.0.0.11", "10.0.0.12").Range()); err != nil {
				t.Fatal(err)
			}
			return l
		}, holder(1), true},
		{"address held by another", func(t *testing.T, s *Source) lease.Lease {
			l, _ := s.Acquire(ctx, stock(1))
			l.Holder = stock(2)
			return l
		}, holder(1), false},
		{"address held by nobody", func(t *testing.T, s *Source) lease.Lease {
			return lease.Lease{Holder: stock(1), Addr: netip.MustParseAddr("10.0.0.12"), Source: Name}
		}, holder(1), false},
		{"holder released it", func(t *testing.T, s *Source) lease.Lease {
			l, _ := s.Acquire(ctx, stock(1))
			s.Release(l)
			return l
		}, holder(1), false},
		{"target already holds one", func(t *testing.T, s *Source) lease.Lease {
			l, _ := s.Acquire(ctx, stock(1))
			if _, err := s.Acquire(ctx, holder(1)); err != nil {
				t.Fatal(err)
			}
			return l
		}, holder(1), false},
		{"to itself", func(t *testing.T, s *Source) lease.Lease {
			l, _ := s.Acquire(ctx, stock(1))
			return l
		}, stock(1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(poolOf("10.0.0.10", "10.0.0.12"))
			if err != nil {
				t.Fatal(err)
			}
			l := tc.setup(t, s)
			before := heldMap(s)
			freeBefore := s.Free()
			got, err := s.Transfer(l, tc.to)
			if !tc.ok {
				if err == nil {
					t.Fatalf("Transfer(%s of %s to %s) = %+v, want an error", l.Addr, l.Holder, tc.to, got)
				}
				if !maps.Equal(heldMap(s), before) || s.Free() != freeBefore {
					t.Fatalf("a failed transfer changed the pool: held %v, was %v", heldMap(s), before)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := l
			want.Holder = tc.to
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("transferred lease %+v, want %+v", got, want)
			}
			if heldMap(s)[l.Addr] != tc.to || len(heldMap(s)) != len(before) || s.Free() != freeBefore {
				t.Fatalf("held %v (free %d), want %s held by %s and nothing else changed", heldMap(s), s.Free(), l.Addr, tc.to)
			}
			// The old holder has nothing left to give back or adopt;
			// the new one has.
			s.Release(l)
			if heldMap(s)[l.Addr] != tc.to {
				t.Fatal("the old holder's release freed the transferred address")
			}
			if err := s.Adopt(l); err == nil {
				t.Fatal("the old holder adopted the transferred address")
			}
			if err := s.Adopt(got); err != nil {
				t.Fatalf("re-adopting the transferred lease: %v", err)
			}
			if _, err := s.Transfer(l, holder(9)); err == nil {
				t.Fatal("the old holder transferred the address again")
			}
			s.Release(got)
			if _, ok := heldMap(s)[l.Addr]; ok {
				t.Fatal("the new holder's release did not free the address")
			}
		})
	}
}

func TestReconfigureBackTakesStrandedIn(t *testing.T) {
	s, _ := New(poolOf("10.0.0.10", "10.0.0.11"))
	ctx := context.Background()
	l, _ := s.Acquire(ctx, holder(1)) // .10
	if _, err := s.Reconfigure(poolOf("10.0.0.11", "10.0.0.12").Range()); err != nil {
		t.Fatal(err)
	}
	stranded, err := s.Reconfigure(poolOf("10.0.0.10", "10.0.0.11").Range())
	if err != nil || len(stranded) != 0 {
		t.Fatalf("back to the first range: stranded %v, %v", stranded, err)
	}
	if st := s.Stats(); st.Used != 1 {
		t.Fatalf("stats %+v: want the formerly stranded address counted as used", st)
	}
	if err := s.Adopt(lease.Lease{Holder: holder(2), Addr: l.Addr}); err == nil {
		t.Fatal("another holder adopted the address back in range")
	}
	s.Release(l)
	if s.Free() != 2 {
		t.Fatalf("free %d after the holder's release, want 2", s.Free())
	}
}
