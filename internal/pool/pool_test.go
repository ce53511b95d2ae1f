package pool

import (
	"net/netip"
	"testing"

	"pgregory.net/rapid"
)

var (
	a10 = netip.MustParseAddr("10.0.0.10")
	a11 = netip.MustParseAddr("10.0.0.11")
	a12 = netip.MustParseAddr("10.0.0.12")
)

func TestNewRejects(t *testing.T) {
	tests := []struct{ start, end string }{
		{"10.0.0.2", "10.0.0.1"},
		{"2001:db8::1", "2001:db8::2"},
		{"10.0.0.0", "10.1.0.0"}, // 65,537 addresses
	}
	for _, tt := range tests {
		if _, err := New(netip.MustParseAddr(tt.start), netip.MustParseAddr(tt.end)); err == nil {
			t.Errorf("New(%s, %s) accepted", tt.start, tt.end)
		}
	}
	p, err := New(netip.MustParseAddr("10.0.0.0"), netip.MustParseAddr("10.0.255.255"))
	if err != nil || p.Size() != MaxSize {
		t.Fatalf("a /16 must fit: %v", err)
	}
}

func TestOrderIsLeastRecentlyFreed(t *testing.T) {
	p, _ := New(a10, a12)
	x, _ := p.Take()
	y, _ := p.Take()
	if x != a10 || y != a11 {
		t.Fatalf("fresh pool handed %s, %s; want ascending", x, y)
	}
	p.Put(x) // free list now: .12, .10
	if z, _ := p.Take(); z != a12 {
		t.Fatalf("took %s, want %s: a just-freed address must not be reused first", z, a12)
	}
	if z, _ := p.Take(); z != a10 {
		t.Fatalf("took %s, want %s", z, a10)
	}
	if _, ok := p.Take(); ok {
		t.Fatal("took from an empty pool")
	}
}

func TestTakeAddrAndPutEdges(t *testing.T) {
	p, _ := New(a10, a12)
	if !p.TakeAddr(a11) || p.TakeAddr(a11) {
		t.Fatal("TakeAddr must succeed once")
	}
	if p.TakeAddr(netip.MustParseAddr("10.0.0.9")) || p.TakeAddr(netip.MustParseAddr("10.0.0.13")) {
		t.Fatal("TakeAddr outside range succeeded")
	}
	if p.Put(a10) {
		t.Fatal("Put of a free address succeeded")
	}
	if p.Put(netip.MustParseAddr("192.0.2.1")) || p.Put(netip.Addr{}) {
		t.Fatal("Put outside the range succeeded")
	}
	if p.Free() != 2 {
		t.Fatalf("free %d, want 2", p.Free())
	}
}

// TestPoolModel checks the pool against a trivial model (a set) under random
// operation sequences: same answers, free count right, never an address
// handed out twice.
func TestPoolModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(1, 40).Draw(t, "size")
		start := netip.MustParseAddr("10.9.0.1")
		p, err := New(start, fromOffset(start, n-1))
		if err != nil {
			t.Fatal(err)
		}
		taken := map[netip.Addr]bool{}
		anyAddr := rapid.Custom(func(t *rapid.T) netip.Addr {
			return fromOffset(start, rapid.IntRange(-2, n+2).Draw(t, "off"))
		})
		t.Repeat(map[string]func(*rapid.T){
			"take": func(t *rapid.T) {
				a, ok := p.Take()
				if ok != (len(taken) < n) {
					t.Fatalf("Take ok=%v with %d of %d taken", ok, len(taken), n)
				}
				if ok {
					if taken[a] || !p.Contains(a) {
						t.Fatalf("Take returned %s twice or out of range", a)
					}
					taken[a] = true
				}
			},
			"takeAddr": func(t *rapid.T) {
				a := anyAddr.Draw(t, "a")
				want := p.Contains(a) && !taken[a]
				if got := p.TakeAddr(a); got != want {
					t.Fatalf("TakeAddr(%s) = %v, want %v", a, got, want)
				}
				if want {
					taken[a] = true
				}
			},
			"put": func(t *rapid.T) {
				a := anyAddr.Draw(t, "a")
				want := taken[a]
				if got := p.Put(a); got != want {
					t.Fatalf("Put(%s) = %v, want %v", a, got, want)
				}
				delete(taken, a)
			},
			"": func(t *rapid.T) {
				if p.Free() != n-len(taken) {
					t.Fatalf("Free() = %d, model says %d", p.Free(), n-len(taken))
				}
				for a := range taken {
					if p.IsFree(a) {
						t.Fatalf("%s is taken but IsFree", a)
					}
				}
			},
		})
	})
}

func fromOffset(a netip.Addr, off int) netip.Addr {
	return FromV4(V4(a) + uint32(off))
}

func BenchmarkTakePut65536(b *testing.B) {
	p, _ := New(netip.MustParseAddr("10.0.0.0"), netip.MustParseAddr("10.0.255.255"))
	for b.Loop() {
		a, _ := p.Take()
		p.Put(a)
	}
}

func TestIndexAt(t *testing.T) {
	p, _ := New(a10, a12)
	for i, a := range []netip.Addr{a10, a11, a12} {
		if got, ok := p.Index(a); !ok || got != i || p.At(i) != a {
			t.Errorf("Index(%s) = %d, %v; At(%d) = %s", a, got, ok, i, p.At(i))
		}
	}
	for _, a := range []string{"10.0.0.9", "10.0.0.13", "2001:db8::a", "::ffff:10.0.0.10"} {
		if i, ok := p.Index(netip.MustParseAddr(a)); ok {
			t.Errorf("Index(%s) = %d inside a range it is not in", a, i)
		}
	}
}
