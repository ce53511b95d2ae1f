package alloc

import (
	"context"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// A holder whose pre-allocation failed (pool exhausted, DHCP down) is not
// retried by every scan, but is retried once preallocRetry has passed: the
// kernel interceptor's sessions never ask for themselves. Per-program mode
// with this test's own program keeps other tests' sessions out of the pool.
func TestPreallocationRetriesAfterBackoff(t *testing.T) {
	f := newFixture(t)
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	d := startDaemon(t, t.TempDir(), f, clk, Settings{
		Policy:      policy.Settings{Enabled: true, Mode: policy.PerProgram, Programs: policy.NewPrograms([]string{f.progA})},
		OnExhausted: ExhaustedMachineIP, Grace: time.Second, Prealloc: true})
	defer d.store.Close()

	var holders []lease.Holder
	var sessions []*loginsession.Session
	for i := range poolSize + 1 {
		s, err := loginsession.Start(context.Background(), f.kind, uint32(61001+i))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Run(f.progA, "600"); err != nil {
			t.Fatal(err)
		}
		kind := lease.KindPOSIX
		if f.kind == loginsession.Audit {
			kind = lease.KindAudit
		}
		sessions = append(sessions, s)
		holders = append(holders, lease.Holder{Session: lease.Session{Kind: kind, ID: s.ID}, Program: f.progA})
	}
	held := func() (n int) {
		for _, h := range holders {
			if _, ok := d.m.Lease(h); ok {
				n++
			}
		}
		return n
	}
	has := func(h lease.Holder) bool { _, ok := d.m.Lease(h); return ok }
	// settle scans and waits for the background acquisitions they start.
	settle := func(want int) {
		t.Helper()
		d.m.ScanOnce()
		deadline := time.Now().Add(10 * time.Second)
		for {
			n := held()
			busy := false
			d.m.prealloc.Range(func(any, any) bool { busy = true; return false })
			if n == want && !busy {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d holders have a VIP, want %d (acquisitions in flight: %v)", n, want, busy)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	settle(poolSize) // one of the four found the pool empty
	loser, winner := -1, -1
	for i, h := range holders {
		if has(h) {
			winner = i
		} else {
			loser = i
		}
	}
	sessions[winner].Close()
	clk.Add(time.Second)
	d.m.ScanOnce() // the winner's session seen gone
	clk.Add(time.Second)
	settle(poolSize - 1) // released after grace; the loser's failure is 2 s old: not retried
	if has(holders[loser]) {
		t.Fatal("a failed pre-allocation was retried before its back-off")
	}
	clk.Add(preallocRetry)
	settle(poolSize) // retried now, into the freed address
	if !has(holders[loser]) {
		t.Fatal("the failed pre-allocation was never retried")
	}
}

// The accept thread skips the executable when decisions do not depend on
// it. A caller identified that way, meeting per-program settings (a reload
// in between), must not be answered "not listed": QueryNow leaves it to
// Query, which identifies it in full.
func TestQueryNowNeedsTheProgramInPerProgramMode(t *testing.T) {
	f := newFixture(t)
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	d := startDaemon(t, t.TempDir(), f, clk, Settings{
		Policy:      policy.Settings{Enabled: true, Mode: policy.PerProgram, Programs: policy.NewPrograms([]string{f.progA})},
		OnExhausted: ExhaustedMachineIP, Grace: time.Second})
	defer d.store.Close()
	if !d.m.NeedsProgram() {
		t.Fatal("per-program mode does not need the program")
	}
	s, err := loginsession.Start(context.Background(), f.kind, 61101)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pid, err := s.Run(f.progA, "600")
	if err != nil {
		t.Fatal(err)
	}
	full, err := identity.NewResolver(f.identity, "").Resolve(pid, 61101, 61101)
	if err != nil {
		t.Fatal(err)
	}
	if a := d.m.Query(context.Background(), full); a.Kind != wire.KindVIP {
		t.Fatalf("listed program got %v (%s)", a.Kind, a.Reason)
	}
	if a, ok := d.m.QueryNow(full); !ok || a.Kind != wire.KindVIP {
		t.Fatalf("QueryNow of a ready holder = %v, %v", a.Kind, ok)
	}
	quick := full
	quick.Exe = ""
	if a, ok := d.m.QueryNow(quick); ok {
		t.Fatalf("QueryNow without the executable answered %v (%s)", a.Kind, a.Reason)
	}

	d.m.SetSettings(Settings{Policy: policy.Settings{Enabled: true, Mode: policy.PerSession},
		OnExhausted: ExhaustedMachineIP, Grace: time.Second})
	if d.m.NeedsProgram() {
		t.Fatal("per-session mode needs the program")
	}
}
