package alloc

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/internal/source/static"
	"github.com/ipvirt/ipvirt/internal/store"
)

// Benchmarks of the decision path. Callers are built directly (identity
// resolution from /proc is measured separately, in bench/alloc) so that
// these time the manager alone.

var bigPool = static.Config{Start: netip.MustParseAddr("10.0.0.0"), End: netip.MustParseAddr("10.0.255.255"),
	SubnetMask: netip.MustParseAddr("255.0.0.0")}

func benchManager(b *testing.B) *Manager {
	st, err := store.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	src, err := static.New(bigPool)
	if err != nil {
		b.Fatal(err)
	}
	return New(Options{Source: src, Store: st, Scanner: identity.NewResolver(identity.Audit, ""),
		Users: identity.NewUsers(time.Hour), Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
		Settings{Policy: policy.Settings{Enabled: true, Mode: policy.PerSession}, OnExhausted: ExhaustedMachineIP, Grace: time.Second})
}

func caller(id uint32) identity.Caller {
	return identity.Caller{PID: int(id), Session: lease.Session{Kind: lease.KindAudit, ID: id}, SessionUID: 60001, Exe: "/usr/bin/psql"}
}

// BenchmarkQueryCached is a known holder asking again (target: under 2 µs).
func BenchmarkQueryCached(b *testing.B) {
	m := benchManager(b)
	c := caller(1)
	if a := m.Query(context.Background(), c); a.Lease.Addr.IsValid() == false {
		b.Fatalf("no VIP: %+v", a)
	}
	b.ReportAllocs()
	for b.Loop() {
		m.Query(context.Background(), c)
	}
}

// BenchmarkQueryCachedParallel is the same from every core at once.
func BenchmarkQueryCachedParallel(b *testing.B) {
	m := benchManager(b)
	for i := range uint32(1024) {
		m.Query(context.Background(), caller(i+1))
	}
	var next atomic.Uint32
	b.RunParallel(func(pb *testing.PB) {
		c := caller(next.Add(1)%1024 + 1)
		for pb.Next() {
			m.Query(context.Background(), c)
		}
	})
}

// BenchmarkQueryNewVIP allocates a fresh, durable VIP per operation from
// 256 concurrent callers (group commit shares the fsyncs).
func BenchmarkQueryNewVIP(b *testing.B) {
	m := benchManager(b)
	var next atomic.Uint32
	b.SetParallelism(128)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := next.Add(1)
			if id > 65536 {
				b.Skip("pool exhausted: lower -benchtime")
			}
			if a := m.Query(context.Background(), caller(id)); !a.Lease.Addr.IsValid() {
				b.Fatalf("no VIP for %d: %s", id, a.Reason)
			}
		}
	})
}
