package alloc

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/internal/source/static"
	"github.com/ipvirt/ipvirt/internal/store"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// The state-machine test drives the real manager with real processes in real
// login sessions (audit sessions as root, POSIX sessions otherwise), a real
// bbolt store that it closes and reopens to model a daemon restart, and the
// real /proc scanner. Only the clock is the test's, so that grace periods
// pass in a step rather than in seconds.

const (
	adminUID = 60009
	grace    = 5 * time.Second
	poolSize = 3
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fixture is what the tests share: programs to run, the session kind.
type fixture struct {
	kind     loginsession.Kind
	identity identity.Kind
	progA    string // a listed program
	progB    string // an unlisted one
}

func newFixture(t testing.TB) fixture {
	f := fixture{kind: loginsession.POSIX, identity: identity.POSIX}
	if ok, _ := loginsession.Available(loginsession.Audit); ok {
		f.kind, f.identity = loginsession.Audit, identity.Audit
	}
	dir := t.TempDir()
	sleep, err := filepath.EvalSymlinks("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	f.progA, f.progB = filepath.Join(dir, "prog-a"), filepath.Join(dir, "prog-b")
	for _, p := range []string{f.progA, f.progB} {
		if err := os.WriteFile(p, body, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// testPool is 127.77.0.10-12: loopback, so nothing needs installing.
var testPool = static.Config{Start: netip.MustParseAddr("127.77.0.10"),
	End: netip.MustParseAddr("127.77.0.12"), SubnetMask: netip.MustParseAddr("255.255.255.0")}

type daemon struct {
	m     *Manager
	src   *static.Source
	store *store.Store
}

// fataler is what both *testing.T and *rapid.T offer.
type fataler interface{ Fatal(args ...any) }

// startDaemon opens the store in dir and starts a manager on it; setup
// runs before Restore (SetKernel, AddObserver).
func startDaemon(t fataler, dir string, f fixture, clk *clock, s Settings, setup ...func(*Manager)) daemon {
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	src, err := static.New(testPool)
	if err != nil {
		t.Fatal(err)
	}
	m := New(Options{Source: src, Store: st, Scanner: identity.NewResolver(f.identity, ""),
		Users: identity.NewUsers(time.Minute), MIP: netip.MustParseAddr("127.0.0.1"),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: clk.Now}, s)
	for _, f := range setup {
		f(m)
	}
	if _, err := m.Restore(); err != nil {
		t.Fatal(err)
	}
	return daemon{m: m, src: src, store: st}
}

// proc is a process the model knows: the session's leader shell or a
// program started in it.
type proc struct {
	pid int
	exe string // "" for the leader shell
}

type modelSession struct {
	s     *loginsession.Session
	uid   uint32
	procs []proc
}

type modelLease struct {
	vip       netip.Addr
	goneSince time.Time // zero while alive
}

type machine struct {
	f        fixture
	dir      string
	clk      *clock
	d        daemon
	settings Settings
	sessions []*modelSession
	leases   map[lease.Holder]*modelLease
	results  map[wire.Kind]uint64
	resolver identity.Resolver
}

func (mc *machine) settingsFor(enabled bool, mode policy.Mode, listA, listB bool, ex Exhausted) Settings {
	var progs []string
	if listA {
		progs = append(progs, mc.f.progA)
	}
	if listB {
		progs = append(progs, mc.f.progB)
	}
	return Settings{Policy: policy.Settings{Enabled: enabled, Mode: mode, Programs: policy.NewPrograms(progs)},
		Admins: Admins{Users: []string{"60009"}}, OnExhausted: ex, Grace: grace}
}

func (mc *machine) sessionOf(h lease.Holder) *modelSession {
	for _, s := range mc.sessions {
		if mc.sessionID(s) == h.Session {
			return s
		}
	}
	return nil
}

func (mc *machine) sessionID(s *modelSession) lease.Session {
	if mc.f.kind == loginsession.Audit {
		return lease.Session{Kind: lease.KindAudit, ID: s.s.ID}
	}
	return lease.Session{Kind: lease.KindPOSIX, ID: s.s.ID}
}

func (mc *machine) alive(h lease.Holder) bool {
	s := mc.sessionOf(h)
	if s == nil {
		return false
	}
	if h.Program == "" {
		return true // the leader shell keeps the session alive
	}
	for _, p := range s.procs {
		if p.exe == h.Program {
			return true
		}
	}
	return false
}

func (mc *machine) logon(t *rapid.T) {
	if len(mc.sessions) >= 5 {
		t.Skip("enough sessions")
	}
	uid := uint32(60001 + len(mc.sessions))
	if rapid.IntRange(0, 4).Draw(t, "admin") == 0 {
		uid = adminUID
	}
	s, err := loginsession.Start(context.Background(), mc.f.kind, uid)
	if err != nil {
		t.Fatal(err)
	}
	mc.sessions = append(mc.sessions, &modelSession{s: s, uid: uid, procs: []proc{{pid: s.LeaderPID()}}})
}

func (mc *machine) logoff(t *rapid.T) {
	if len(mc.sessions) == 0 {
		t.Skip("no session")
	}
	i := rapid.IntRange(0, len(mc.sessions)-1).Draw(t, "session")
	mc.sessions[i].s.Close()
	mc.sessions = slices.Delete(mc.sessions, i, i+1)
}

func (mc *machine) startProgram(t *rapid.T) {
	if len(mc.sessions) == 0 {
		t.Skip("no session")
	}
	startModelProgram(t, mc.f, mc.sessions)
}

func (mc *machine) stopProgram(t *rapid.T) { stopModelProgram(t, mc.sessions) }

// startModelProgram starts one of the fixture's two programs in one of
// sessions (which must not be empty).
func startModelProgram(t *rapid.T, f fixture, sessions []*modelSession) {
	s := rapid.SampledFrom(sessions).Draw(t, "session")
	exe := rapid.SampledFrom([]string{f.progA, f.progB}).Draw(t, "program")
	pid, err := s.s.Run(exe, "600")
	if err != nil {
		t.Fatal(err)
	}
	s.procs = append(s.procs, proc{pid: pid, exe: exe})
}

// stopModelProgram kills a program startModelProgram started in one of
// sessions (a session's first process, its leader, stays).
func stopModelProgram(t *rapid.T, sessions []*modelSession) {
	var owners []*modelSession
	for _, s := range sessions {
		if len(s.procs) > 1 {
			owners = append(owners, s)
		}
	}
	if len(owners) == 0 {
		t.Skip("no program running")
	}
	s := rapid.SampledFrom(owners).Draw(t, "session")
	i := rapid.IntRange(1, len(s.procs)-1).Draw(t, "proc")
	if err := s.s.Kill(s.procs[i].pid); err != nil {
		t.Fatal(err)
	}
	s.procs = slices.Delete(s.procs, i, i+1)
}

func (mc *machine) query(t *rapid.T) {
	if len(mc.sessions) == 0 {
		t.Skip("no session")
	}
	s := rapid.SampledFrom(mc.sessions).Draw(t, "session")
	p := rapid.SampledFrom(s.procs).Draw(t, "proc")
	c, err := mc.resolver.Resolve(p.pid, s.uid, s.uid)
	if err != nil {
		t.Fatal(err)
	}
	got := mc.d.m.Query(context.Background(), c)

	// The model's answer.
	st := mc.settings.Policy
	var h lease.Holder
	want := wire.KindVIP
	switch {
	case !st.Enabled, s.uid == adminUID:
		want = wire.KindMIP
	case st.Mode == policy.PerProgram && !st.Programs[c.Exe]:
		want = wire.KindMIP
	default:
		h = lease.Holder{Session: mc.sessionID(s)}
		if st.Mode == policy.PerProgram {
			h.Program = c.Exe
		}
		if _, has := mc.leases[h]; !has && len(mc.leases) >= poolSize {
			want = wire.KindMIP
			if mc.settings.OnExhausted == ExhaustedDeny {
				want = wire.KindDenied
			}
		}
	}
	mc.results[want]++
	if got.Kind != want {
		t.Fatalf("query from pid %d (%s, uid %d): got %s (%s), model says %s", p.pid, c.Exe, s.uid, got.Kind, got.Reason, want)
	}
	if want != wire.KindVIP {
		return
	}
	if ml, has := mc.leases[h]; has {
		if ml.vip != got.Lease.Addr {
			t.Fatalf("holder %s got %s, had %s", h, got.Lease.Addr, ml.vip)
		}
		return
	}
	for other, ml := range mc.leases {
		if ml.vip == got.Lease.Addr {
			t.Fatalf("holder %s got %s, already held by %s", h, got.Lease.Addr, other)
		}
	}
	mc.leases[h] = &modelLease{vip: got.Lease.Addr}
}

func (mc *machine) reconfigure(t *rapid.T) {
	mode := rapid.SampledFrom([]policy.Mode{policy.PerSession, policy.PerProgram}).Draw(t, "mode")
	ex := rapid.SampledFrom([]Exhausted{ExhaustedMachineIP, ExhaustedDeny}).Draw(t, "on_exhausted")
	mc.settings = mc.settingsFor(rapid.IntRange(0, 5).Draw(t, "enabled") > 0, mode,
		rapid.Bool().Draw(t, "listA"), rapid.Bool().Draw(t, "listB"), ex)
	mc.d.m.SetSettings(mc.settings) // never takes a lease away
}

func (mc *machine) scan(t *rapid.T) {
	mc.clk.Add(time.Duration(rapid.IntRange(0, 4).Draw(t, "seconds")) * time.Second)
	now := mc.clk.Now()
	mc.d.m.ScanOnce()
	for h, ml := range mc.leases {
		if mc.alive(h) {
			ml.goneSince = time.Time{}
			continue
		}
		if ml.goneSince.IsZero() {
			ml.goneSince = now
		}
		if now.Sub(ml.goneSince) >= grace {
			delete(mc.leases, h)
		}
	}
}

func (mc *machine) restart(t *rapid.T) {
	if err := mc.d.store.Close(); err != nil {
		t.Fatal(err)
	}
	mc.d = startDaemon(t, mc.dir, mc.f, mc.clk, mc.settings)
	// Counters restart with the daemon.
	mc.results = map[wire.Kind]uint64{}
	for h, ml := range mc.leases {
		if !mc.alive(h) {
			delete(mc.leases, h) // ended while the daemon was down
		} else {
			ml.goneSince = time.Time{}
		}
	}
}

func (mc *machine) check(t *rapid.T) {
	m := mc.d.m
	if n := m.DuplicateVIPs(); n != 0 {
		t.Fatalf("ipvirt_duplicate_vips = %d", n)
	}
	got := map[lease.Holder]netip.Addr{}
	seen := map[netip.Addr]lease.Holder{}
	for _, l := range m.Leases() {
		if other, dup := seen[l.Addr]; dup {
			t.Fatalf("%s held by %s and %s", l.Addr, other, l.Holder)
		}
		seen[l.Addr] = l.Holder
		got[l.Holder] = l.Addr
	}
	if len(got) != len(mc.leases) {
		t.Fatalf("manager has %d leases %v, model %d", len(got), got, len(mc.leases))
	}
	for h, ml := range mc.leases {
		if got[h] != ml.vip {
			t.Fatalf("holder %s: manager says %v, model %s", h, got[h], ml.vip)
		}
	}
	st := m.Status()
	if st.PoolFree+mc.d.src.Stats().Used != poolSize || st.PoolSize != poolSize || st.Leases != len(mc.leases) {
		t.Fatalf("status %+v does not add up with %d leases", st, len(mc.leases))
	}
	c := m.Counters()
	for _, k := range []wire.Kind{wire.KindVIP, wire.KindMIP, wire.KindDenied} {
		if c.Results[k] != mc.results[k] {
			t.Fatalf("counter %s = %d, model counted %d", k, c.Results[k], mc.results[k])
		}
	}
}

func TestManagerStateMachine(t *testing.T) {
	f := newFixture(t)
	t.Logf("sessions: %s", f.kind)
	base := t.TempDir()
	rapid.Check(t, func(t *rapid.T) {
		dir, err := os.MkdirTemp(base, "run")
		if err != nil {
			t.Fatal(err)
		}
		mc := &machine{f: f, dir: dir, clk: &clock{t: time.Unix(1_800_000_000, 0)},
			leases: map[lease.Holder]*modelLease{}, results: map[wire.Kind]uint64{},
			resolver: identity.NewResolver(f.identity, "")}
		mc.settings = mc.settingsFor(true, policy.PerSession, true, false, ExhaustedMachineIP)
		mc.d = startDaemon(t, mc.dir, f, mc.clk, mc.settings)
		defer func() {
			for _, s := range mc.sessions {
				s.s.Close()
			}
			mc.d.store.Close()
		}()
		t.Repeat(map[string]func(*rapid.T){
			"logon":        mc.logon,
			"logoff":       mc.logoff,
			"startProgram": mc.startProgram,
			"stopProgram":  mc.stopProgram,
			"query":        mc.query,
			"reconfigure":  mc.reconfigure,
			"scan":         mc.scan,
			"restart":      mc.restart,
			"":             mc.check,
		})
	})
}
