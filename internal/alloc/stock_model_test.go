package alloc

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/internal/source"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// The stock state machine (issue 11) drives the real manager as
// model_test.go does (real login sessions, a real bbolt store closed and
// reopened at every restart, the static pool of three addresses, the real
// /proc scanner), beside a model of the kernel interceptor that hands out
// stock addresses at a holder's first socket call. The model kernel has the
// BPF program's semantics (lsp/bpf/intercept.bpf.c, assign); the daemon's
// glue (internal/daemon/stock.go: fill, reconcile, assigned) is written out
// here, step by step, so that rapid can interleave it with everything else:
// first calls caught between their pop and their insert, two first calls of
// one holder racing, a first call while the daemon acquires for the same
// holder, events lost for a while, delivered twice, or delivered after a
// restart.

// modelKernel is the kernel interceptor's maps as assign() uses them. stock
// is a BPF queue: pop takes the head, push appends. sessions and programs
// are hash maps that first calls and Claim write with BPF_NOEXIST. All of
// them are pinned: they outlive a daemon restart. It implements
// KernelClaims.
type modelKernel struct {
	mu       sync.Mutex
	stock    []netip.Addr
	sessions map[lease.Session]netip.Addr
	programs map[lease.Holder]netip.Addr
	// duringClaim, when set, runs at the next Claim before its insert: a
	// first call of the holder made while the daemon was acquiring for it.
	// It runs in the acquisition's goroutine, with mu held.
	duringClaim func(h lease.Holder)
	// overwrites lists the grants that replaced an entry naming another
	// address: a holder whose sockets use one address, told another.
	overwrites []string
}

func newModelKernel() *modelKernel {
	return &modelKernel{sessions: map[lease.Session]netip.Addr{}, programs: map[lease.Holder]netip.Addr{}}
}

func (k *modelKernel) getLocked(h lease.Holder) (netip.Addr, bool) {
	if h.Program == "" {
		a, ok := k.sessions[h.Session]
		return a, ok
	}
	a, ok := k.programs[h]
	return a, ok
}

func (k *modelKernel) setLocked(h lease.Holder, a netip.Addr) {
	if h.Program == "" {
		k.sessions[h.Session] = a
	} else {
		k.programs[h] = a
	}
}

func (k *modelKernel) deleteLocked(h lease.Holder) {
	if h.Program == "" {
		delete(k.sessions, h.Session)
	} else {
		delete(k.programs, h)
	}
}

// insertLocked is bpf_map_update_elem with BPF_NOEXIST: it makes a h's
// entry unless h has one, which it returns instead, with false.
func (k *modelKernel) insertLocked(h lease.Holder, a netip.Addr) (netip.Addr, bool) {
	if cur, ok := k.getLocked(h); ok {
		return cur, false
	}
	k.setLocked(h, a)
	return a, true
}

func (k *modelKernel) popLocked() (netip.Addr, bool) {
	if len(k.stock) == 0 {
		return netip.Addr{}, false
	}
	a := k.stock[0]
	k.stock = slices.Delete(k.stock, 0, 1)
	return a, true
}

func (k *modelKernel) pop() (netip.Addr, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.popLocked()
}

func (k *modelKernel) push(a netip.Addr) {
	k.mu.Lock()
	k.stock = append(k.stock, a)
	k.mu.Unlock()
}

func (k *modelKernel) lookup(h lease.Holder) (netip.Addr, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.getLocked(h)
}

func (k *modelKernel) queue() []netip.Addr {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.stock)
}

// entries lists the session and program entries.
func (k *modelKernel) entries() map[lease.Holder]netip.Addr {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[lease.Holder]netip.Addr{}
	for s, a := range k.sessions {
		out[lease.Holder{Session: s}] = a
	}
	for h, a := range k.programs {
		out[h] = a
	}
	return out
}

// Claim implements KernelClaims.
func (k *modelKernel) Claim(h lease.Holder, addr netip.Addr) (netip.Addr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if during := k.duringClaim; during != nil {
		k.duringClaim = nil
		during(h)
	}
	cur, _ := k.insertLocked(h, addr)
	return cur, nil
}

// TakeStock implements KernelClaims.
func (k *modelKernel) TakeStock() (netip.Addr, bool) { return k.pop() }

func (k *modelKernel) Entry(h lease.Holder) (netip.Addr, bool) { return k.lookup(h) }

// modelKernelObserver keeps the entries in step with the manager as the
// daemon's kernel observer does (internal/daemon/kernel.go): a grant
// writes the holder's entry, a release deletes it; stock leases have none.
type modelKernelObserver struct{ k *modelKernel }

func (o modelKernelObserver) Granted(l lease.Lease) {
	if l.Holder.Session.Stock() {
		return
	}
	o.k.mu.Lock()
	defer o.k.mu.Unlock()
	if cur, ok := o.k.getLocked(l.Holder); ok && cur != l.Addr {
		o.k.overwrites = append(o.k.overwrites, fmt.Sprintf("%s granted %s over its kernel entry %s", l.Holder, l.Addr, cur))
	}
	o.k.setLocked(l.Holder, l.Addr)
}

func (o modelKernelObserver) Released(l lease.Lease) {
	if l.Holder.Session.Stock() {
		return
	}
	o.k.mu.Lock()
	o.k.deleteLocked(l.Holder)
	o.k.mu.Unlock()
}

// kcall is a first call between its pop and its insert, or the
// EV_ASSIGNED event of one that won.
type kcall struct {
	h   lease.Holder
	uid uint32
	vip netip.Addr
}

func (c kcall) String() string { return fmt.Sprintf("%s←%s", c.h, c.vip) }

// stockTally counts what the runs did, for the test's log: a machine that
// never exhausts its pool or never races proves little.
type stockTally struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *stockTally) add(what string) {
	s.mu.Lock()
	s.n[what]++
	s.mu.Unlock()
}

func (s *stockTally) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.n))
	for k := range s.n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %-40s %d", k, s.n[k])
	}
	return b.String()
}

type stockMachine struct {
	f          fixture
	dir        string
	clk        *clock
	settings   Settings
	perProgram bool
	d          daemon
	k          *modelKernel
	sessions   []*modelSession
	logons     int
	inflight   []kcall // first calls that popped and have not inserted yet
	pending    []kcall // EV_ASSIGNED events not yet read
	lost       []kcall // EV_ASSIGNED events the ring buffer dropped: only the map tells
	resolver   identity.Resolver
	tally      *stockTally
	logf       func(format string, args ...any) // the run's log, shown when it fails
}

func (mc *stockMachine) start(t fataler) {
	mc.d = startDaemon(t, mc.dir, mc.f, mc.clk, mc.settings, func(m *Manager) {
		m.SetKernel(mc.k)
		m.AddObserver(modelKernelObserver{mc.k})
	})
}

func (mc *stockMachine) sessionID(s *modelSession) lease.Session {
	if mc.f.kind == loginsession.Audit {
		return lease.Session{Kind: lease.KindAudit, ID: s.s.ID}
	}
	return lease.Session{Kind: lease.KindPOSIX, ID: s.s.ID}
}

func (mc *stockMachine) alive(h lease.Holder) bool {
	for _, s := range mc.sessions {
		if mc.sessionID(s) != h.Session {
			continue
		}
		if h.Program == "" {
			return true
		}
		for _, p := range s.procs {
			if p.exe == h.Program {
				return true
			}
		}
	}
	return false
}

// holderOf is the holder the kernel and the rules give p: none in the
// administrator's sessions, and in per-program mode none but for the
// listed program.
func (mc *stockMachine) holderOf(s *modelSession, p proc) (lease.Holder, bool) {
	if s.uid == adminUID {
		return lease.Holder{}, false
	}
	h := lease.Holder{Session: mc.sessionID(s)}
	if mc.perProgram {
		if p.exe != mc.f.progA {
			return lease.Holder{}, false
		}
		h.Program = p.exe
	}
	return h, true
}

type kcaller struct {
	h   lease.Holder
	uid uint32
}

// kernelCallers lists the holders the kernel would serve, one per live
// process that would be one.
func (mc *stockMachine) kernelCallers() []kcaller {
	var out []kcaller
	for _, s := range mc.sessions {
		for _, p := range s.procs {
			if h, ok := mc.holderOf(s, p); ok {
				out = append(out, kcaller{h: h, uid: s.uid})
			}
		}
	}
	return out
}

// settle waits for the background acquisitions Ensure started.
func (mc *stockMachine) settle(t fataler) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		busy := false
		mc.d.m.prealloc.Range(func(any, any) bool { busy = true; return false })
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a pre-allocation never finished")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// deliver is the daemon reading EV_ASSIGNED (or finding the entry at
// start): internal/daemon/stock.go's assigned, which only logs a failure.
func (mc *stockMachine) deliver(ev kcall) {
	_, err := mc.d.m.Assigned(ev.h, ev.vip, ev.uid)
	mc.logf("event %s read: %v", ev, err)
	switch {
	case err == nil:
		mc.tally.add("assigned: ok")
	case errors.Is(err, ErrNotStock):
		mc.tally.add("assigned: not a stock lease")
	case errors.Is(err, ErrStale):
		mc.tally.add("assigned: stale")
	default:
		mc.tally.add("assigned: other error")
	}
}

// begin is assign() up to its insert: a socket call of h, which has no
// entry, pops an address. It reports whether the call is now in flight:
// not when h has an entry (the call uses it) or the stock is empty.
func (mc *stockMachine) begin(t *rapid.T, c kcaller) bool {
	mc.k.mu.Lock()
	_, has := mc.k.getLocked(c.h)
	a, ok := netip.Addr{}, false
	if !has {
		a, ok = mc.k.popLocked()
	}
	mc.k.mu.Unlock()
	switch {
	case has:
		return false
	case !ok:
		mc.empty(t, c)
		return false
	}
	mc.inflight = append(mc.inflight, kcall{h: c.h, uid: c.uid, vip: a})
	return true
}

// empty is EV_EMPTY: the daemon acquires for the holder the slow way
// (Ensure), and the call leaves from the machine IP.
func (mc *stockMachine) empty(t *rapid.T, c kcaller) {
	mc.tally.add("first call: stock empty")
	if rapid.Bool().Draw(t, "emptyEventRead") {
		mc.d.m.Ensure(c.h.Session, c.uid, c.h.Program)
		mc.settle(t)
	}
}

// end is the rest of assign() for in-flight call i: insert the entry
// unless another call of the holder won, whose address is then used and
// this one pushed back; report EV_ASSIGNED when it won. later keeps the
// event unread.
func (mc *stockMachine) end(t *rapid.T, i int, later bool) {
	c := mc.inflight[i]
	mc.inflight = slices.Delete(mc.inflight, i, i+1)
	mc.k.mu.Lock()
	_, won := mc.k.insertLocked(c.h, c.vip)
	if !won {
		mc.k.stock = append(mc.k.stock, c.vip)
	}
	mc.k.mu.Unlock()
	if !won {
		mc.tally.add("first call: lost the race, pushed back")
		return
	}
	mc.tally.add("first call: assigned")
	how := 1
	if !later {
		how = rapid.IntRange(0, 4).Draw(t, "event")
	}
	switch how {
	case 0:
		mc.deliver(c)
	case 1: // unread for now
		mc.pending = append(mc.pending, c)
	case 2:
		mc.deliver(c)
		mc.deliver(c)
	case 3: // a second copy comes later
		mc.deliver(c)
		mc.pending = append(mc.pending, c)
	case 4: // the ring buffer was full
		mc.tally.add("event lost")
		mc.lost = append(mc.lost, c)
	}
}

func (mc *stockMachine) logon(t *rapid.T) {
	if len(mc.sessions) >= 5 {
		t.Skip("enough sessions")
	}
	mc.logons++
	uid := uint32(60001 + mc.logons%8)
	if rapid.IntRange(0, 4).Draw(t, "admin") == 0 {
		uid = adminUID
	}
	s, err := loginsession.Start(context.Background(), mc.f.kind, uid)
	if err != nil {
		t.Fatal(err)
	}
	mc.sessions = append(mc.sessions, &modelSession{s: s, uid: uid, procs: []proc{{pid: s.LeaderPID()}}})
}

func (mc *stockMachine) logoff(t *rapid.T) {
	if len(mc.sessions) == 0 {
		t.Skip("no session")
	}
	i := rapid.IntRange(0, len(mc.sessions)-1).Draw(t, "session")
	mc.sessions[i].s.Close()
	mc.sessions = slices.Delete(mc.sessions, i, i+1)
}

func (mc *stockMachine) startProgram(t *rapid.T) {
	if !mc.perProgram || len(mc.sessions) == 0 {
		t.Skip("per-session mode, or no session")
	}
	startModelProgram(t, mc.f, mc.sessions)
}

func (mc *stockMachine) stopProgram(t *rapid.T) { stopModelProgram(t, mc.sessions) }

// fill is the stocker's fill: the places below n that have no lease get
// one, each pushed into the kernel's stock as soon as it is durable.
func (mc *stockMachine) fill(t *rapid.T) {
	n := rapid.IntRange(1, 3).Draw(t, "places")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := mc.d.m.FillStock(ctx, n, func(l lease.Lease) { mc.k.push(l.Addr) })
	if err != nil {
		if !errors.Is(err, source.ErrExhausted) {
			t.Fatalf("fill %d: %v", n, err)
		}
		mc.tally.add("fill: pool exhausted")
	}
}

// shrink is the stocker's fill past its target: an address out of the
// kernel's stock, and its lease released.
func (mc *stockMachine) shrink(t *rapid.T) {
	a, ok := mc.k.pop()
	if !ok {
		t.Skip("empty stock")
	}
	if !mc.d.m.ReleaseStock(a) {
		t.Fatalf("the kernel's stock had %s, which no stock lease has", a)
	}
}

// firstUse is one first socket call, start to end.
func (mc *stockMachine) firstUse(t *rapid.T) {
	cs := mc.kernelCallers()
	if len(cs) == 0 {
		t.Skip("no holder the kernel serves")
	}
	c := cs[rapid.IntRange(0, len(cs)-1).Draw(t, "caller")]
	if mc.begin(t, c) {
		mc.end(t, len(mc.inflight)-1, false)
	}
}

// beginCall leaves a first call between its pop and its insert, for other
// steps to come in between.
func (mc *stockMachine) beginCall(t *rapid.T) {
	cs := mc.kernelCallers()
	if len(cs) == 0 || len(mc.inflight) >= 3 {
		t.Skip("no holder the kernel serves, or enough calls in flight")
	}
	mc.begin(t, cs[rapid.IntRange(0, len(cs)-1).Draw(t, "caller")])
}

func (mc *stockMachine) endCall(t *rapid.T) {
	if len(mc.inflight) == 0 {
		t.Skip("no call in flight")
	}
	mc.end(t, rapid.IntRange(0, len(mc.inflight)-1).Draw(t, "call"), false)
}

// race is two first calls of one holder on two CPUs: both pop before
// either inserts.
func (mc *stockMachine) race(t *rapid.T) {
	var cs []kcaller
	for _, c := range mc.kernelCallers() {
		if _, has := mc.k.lookup(c.h); !has {
			cs = append(cs, c)
		}
	}
	if len(cs) == 0 {
		t.Skip("no holder without an entry")
	}
	c := cs[rapid.IntRange(0, len(cs)-1).Draw(t, "caller")]
	n := 0
	for range 2 {
		if mc.begin(t, c) {
			n++
		}
	}
	if n == 2 {
		mc.tally.add("race: both popped")
	}
	if n == 2 && rapid.Bool().Draw(t, "secondInsertsFirst") {
		mc.end(t, len(mc.inflight)-1, false)
		n--
	}
	for ; n > 0; n-- {
		mc.end(t, len(mc.inflight)-n, false)
	}
}

func (mc *stockMachine) readEvent(t *rapid.T) {
	if len(mc.pending) == 0 {
		t.Skip("no event unread")
	}
	i := rapid.IntRange(0, len(mc.pending)-1).Draw(t, "event")
	ev := mc.pending[i]
	if !rapid.Bool().Draw(t, "readAgainLater") {
		mc.pending = slices.Delete(mc.pending, i, i+1)
	}
	mc.deliver(ev)
}

// query is the daemon path: a QUERY from a process, which acquires
// (acquire, then keepKernels) for a holder without a lease. The holder's
// first call may come while the daemon acquires, its event read at once
// (while the acquisition is still under way) or later.
func (mc *stockMachine) query(t *rapid.T) {
	if len(mc.sessions) == 0 {
		t.Skip("no session")
	}
	// Mostly a process the rules virtualize: the others only get the
	// machine IP.
	type sp struct {
		s *modelSession
		p proc
	}
	var all, virtualized []sp
	for _, s := range mc.sessions {
		for _, p := range s.procs {
			all = append(all, sp{s, p})
			if _, ok := mc.holderOf(s, p); ok {
				virtualized = append(virtualized, sp{s, p})
			}
		}
	}
	from := all
	if len(virtualized) > 0 && rapid.IntRange(0, 3).Draw(t, "anyProcess") > 0 {
		from = virtualized
	}
	pick := from[rapid.IntRange(0, len(from)-1).Draw(t, "process")]
	s, p := pick.s, pick.p
	c, err := mc.resolver.Resolve(p.pid, s.uid, s.uid)
	if err != nil {
		t.Fatal(err)
	}
	h, virt := mc.holderOf(s, p)
	during := rapid.IntRange(0, 2).Draw(t, "firstCallDuringAcquire")
	var wg sync.WaitGroup
	if virt && during > 0 {
		mc.k.mu.Lock()
		mc.k.duringClaim = func(ch lease.Holder) {
			if ch != h {
				return
			}
			if _, has := mc.k.getLocked(h); has {
				return
			}
			a, ok := mc.k.popLocked()
			if !ok {
				return
			}
			mc.k.setLocked(h, a)
			ev := kcall{h: h, uid: s.uid, vip: a}
			mc.tally.add("first call: during an acquisition")
			if during == 1 {
				mc.pending = append(mc.pending, ev)
			} else {
				wg.Go(func() { mc.deliver(ev) })
			}
		}
		mc.k.mu.Unlock()
	}
	freeBefore := mc.d.src.Free()
	_, hadLease := mc.d.m.Lease(h)
	_, hadEntry := mc.k.lookup(h)
	got := mc.d.m.Query(context.Background(), c)
	wg.Wait()
	mc.k.mu.Lock()
	mc.k.duringClaim = nil // not called: the holder had a lease, or the source failed
	mc.k.mu.Unlock()
	switch {
	case !virt:
		mc.tally.add("query: not virtualized")
	case got.Kind != wire.KindVIP:
		mc.tally.add("query: exhausted")
	case hadLease:
		mc.tally.add("query: vip held")
	case hadEntry:
		mc.tally.add("query: vip the kernel had given")
	case freeBefore == 0:
		mc.tally.add("query: vip from the kernel's stock")
	default:
		mc.tally.add("query: vip from the pool")
	}

	if !virt {
		if got.Kind == wire.KindVIP {
			t.Fatalf("pid %d (%s, uid %d) got VIP %s", p.pid, c.Exe, s.uid, got.Lease.Addr)
		}
		return
	}
	entry, has := mc.k.lookup(h)
	switch {
	case got.Kind == wire.KindVIP:
		if got.Holder != h || !has || entry != got.Lease.Addr {
			t.Fatalf("%s answered %s as %s; the kernel's entry: %v (%v)", h, got.Lease.Addr, got.Holder, entry, has)
		}
	case has && (freeBefore > 0 || len(mc.k.queue()) > 0):
		// With nothing to acquire, and the stock empty, the daemon
		// path has nothing to move to the holder until its event is
		// read; otherwise it must answer what the kernel gave.
		t.Fatalf("%s, whom the kernel gave %s, answered %s (%s)", h, entry, got.Kind, got.Reason)
	}
}

// scan passes time and reaps. The daemon reads events as they come: a
// holder's are read before a scan can see it gone for a grace period.
func (mc *stockMachine) scan(t *rapid.T) {
	mc.readEventsOfGone()
	mc.clk.Add(time.Duration(rapid.IntRange(0, 4).Draw(t, "seconds")) * time.Second)
	mc.d.m.ScanOnce()
}

// readEventsOfGone reads the unread events of holders that have ended.
func (mc *stockMachine) readEventsOfGone() {
	var keep []kcall
	for _, ev := range mc.pending {
		if mc.alive(ev.h) {
			keep = append(keep, ev)
		} else {
			mc.deliver(ev)
		}
	}
	mc.pending = keep
}

// restart closes the store and starts a new manager on it; the kernel's
// maps and stock stay, as pinned maps do, and so do unread events (the
// ring buffer is pinned too). The new daemon then does what
// internal/daemon does at start: kernel.reconcile, stocker.reconcile.
func (mc *stockMachine) restart(t *rapid.T) {
	mc.settle(t)
	if !*staleEvents && rapid.Bool().Draw(t, "old daemon read the ended holders' events") {
		mc.readEventsOfGone()
	}
	if err := mc.d.store.Close(); err != nil {
		t.Fatal(err)
	}
	mc.start(t)
	m := mc.d.m

	// kernel.reconcile: entries naming no lease's address go.
	live := map[netip.Addr]bool{}
	for _, l := range m.Leases() {
		live[l.Addr] = true
	}
	mc.k.mu.Lock()
	for s, a := range mc.k.sessions {
		if !live[a] {
			delete(mc.k.sessions, s)
		}
	}
	for h, a := range mc.k.programs {
		if !live[a] {
			delete(mc.k.programs, h)
		}
	}
	// stocker.reconcile: the stock out of the kernel, ...
	queued := mc.k.stock
	mc.k.stock = nil
	mc.k.mu.Unlock()
	inQueue := map[netip.Addr]bool{}
	for _, a := range queued {
		inQueue[a] = true
	}
	handedOut := func() map[netip.Addr]lease.Holder {
		out := map[netip.Addr]lease.Holder{}
		for h, a := range mc.k.entries() {
			out[a] = h
		}
		return out
	}
	byMap := func(h lease.Holder, a netip.Addr) {
		mc.tally.add("restart: assigned by the map")
		mc.deliver(kcall{h: h, uid: m.SessionUID(h.Session), vip: a})
	}
	// ... each stock lease handed out moved to its holder, the others
	// pushed back, ...
	handed := handedOut()
	var missing []lease.Lease
	for _, l := range m.Stock() {
		h, has := handed[l.Addr]
		switch {
		case has:
			byMap(h, l.Addr)
		case inQueue[l.Addr]:
			mc.k.push(l.Addr)
		default:
			missing = append(missing, l)
		}
		delete(inQueue, l.Addr)
	}
	if len(missing) > 0 {
		// ... those in neither looked at again once the first calls
		// that had popped them are done (stockSettleTime).
		mc.tally.add("restart: stock lease missing")
		for len(mc.inflight) > 0 {
			mc.end(t, 0, true)
		}
		// A call that lost its race pushed its address back meanwhile:
		// the stock is taken out again, so that none goes in twice.
		mc.k.mu.Lock()
		again := mc.k.stock
		mc.k.stock = nil
		mc.k.mu.Unlock()
		for _, a := range again {
			mc.k.push(a)
		}
		handed = handedOut()
		for _, l := range missing {
			if h, has := handed[l.Addr]; has {
				byMap(h, l.Addr)
			} else if !slices.Contains(again, l.Addr) {
				mc.k.push(l.Addr)
			}
		}
	}
	for range inQueue {
		mc.tally.add("restart: stock address without a lease dropped")
	}
	mc.lost = nil // the maps told
}

// checkT is what check needs of *rapid.T and *testing.T.
type checkT interface {
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

// check is the invariants, after every step.
func (mc *stockMachine) check(t checkT) {
	m := mc.d.m
	var ls []string
	for _, l := range m.Leases() {
		ls = append(ls, l.Holder.Key()+"="+l.Addr.String())
	}
	slices.Sort(ls)
	t.Logf("state: leases %v; kernel %v stock %v; in flight %v; unread %v; lost %v",
		ls, mc.k.entries(), mc.k.queue(), mc.inflight, mc.pending, mc.lost)
	if n := m.DuplicateVIPs(); n != 0 {
		t.Fatalf("ipvirt_duplicate_vips = %d", n)
	}
	leases := map[lease.Holder]netip.Addr{}
	holderOf := map[netip.Addr]lease.Holder{}
	stock := map[netip.Addr]bool{}
	for _, l := range m.Leases() {
		if other, dup := holderOf[l.Addr]; dup {
			t.Fatalf("%s held by %s and %s", l.Addr, other, l.Holder)
		}
		holderOf[l.Addr] = l.Holder
		leases[l.Holder] = l.Addr
		if l.Holder.Session.Stock() {
			stock[l.Addr] = true
		}
	}
	if used := mc.d.src.Stats().Used; used != len(leases) {
		t.Fatalf("the source has %d addresses out, the manager %d leases %v", used, len(leases), leases)
	}
	mc.k.mu.Lock()
	overwrites := slices.Clone(mc.k.overwrites)
	mc.k.mu.Unlock()
	if len(overwrites) > 0 {
		t.Fatalf("grants replaced kernel entries: %v", overwrites)
	}

	// The kernel's stock: stock leases only, each once, no entry's.
	entries := mc.k.entries()
	named := map[netip.Addr]lease.Holder{}
	for h, a := range entries {
		if other, dup := named[a]; dup {
			t.Fatalf("the kernel gives %s to %s and %s", a, other, h)
		}
		named[a] = h
	}
	inStock := map[netip.Addr]string{}
	for _, a := range mc.k.queue() {
		if inStock[a] != "" {
			t.Fatalf("%s twice in the kernel's stock %v", a, mc.k.queue())
		}
		inStock[a] = "the kernel's stock"
	}
	for _, c := range mc.inflight {
		if inStock[c.vip] != "" {
			t.Fatalf("first call %s popped an address also in %s", c, inStock[c.vip])
		}
		inStock[c.vip] = "a first call in flight"
	}
	for a, where := range inStock {
		if !stock[a] {
			t.Fatalf("%s in %s is no stock lease's (held by %v)", a, where, holderOf[a])
		}
		if h, ok := named[a]; ok {
			t.Fatalf("%s in %s is %s's in the kernel", a, where, h)
		}
	}

	// Every entry is its holder's lease, or will be when the unread
	// event is read.
	for h, a := range entries {
		if l, ok := leases[h]; ok {
			if l != a {
				t.Fatalf("the kernel gives %s to %s, which holds %s", a, h, l)
			}
			continue
		}
		told := func(ev kcall) bool { return ev.h == h && ev.vip == a }
		if !slices.ContainsFunc(mc.pending, told) && !slices.ContainsFunc(mc.lost, told) {
			t.Fatalf("the kernel gives %s to %s, which has no lease, no unread event and no lost one (unread %v)", a, h, mc.pending)
		}
		if !stock[a] {
			t.Fatalf("the kernel gave %s to %s, whose event is unread, but it is no stock lease's (held by %v)", a, h, holderOf[a])
		}
	}
	// Every holder's lease is its kernel entry.
	for h, a := range leases {
		if h.Session.Stock() {
			continue
		}
		if e, ok := entries[h]; !ok || e != a {
			t.Fatalf("%s holds %s; its kernel entry: %v (%v)", h, a, e, ok)
		}
	}
}

// staleEvents makes every restart leave ended holders' events unread
// (otherwise rapid draws it).
var staleEvents = flag.Bool("stock.stale-events", false,
	"TestStockStateMachine: unread events always survive a restart that releases their holder")

// TestStockStateMachine checks after every step that no address is held
// by two holders (the manager's leases, stock ones included); that every
// address in the kernel's stock, or popped by a call in flight, is a stock
// lease's, once, and named by no entry; that every entry is its holder's
// lease, or will be when the holder's unread (or lost) event is read; that
// every holder's lease is its entry; that no grant replaced an entry
// naming another address; and that a QUERY answers what the kernel gave.
//
// The model assumes what the daemon ensures by timing: a first call that
// popped an address inserts it within stockSettleTime, and the daemon
// reads a holder's event before a scan has seen the holder gone for a
// grace period. An event may wait, unread, through a restart whose
// Restore releases its holder and whose first fill restocks its address:
// Assigned then finds the kernel's entry for the holder gone (ErrStale)
// and moves nothing. (Before it asked the kernel, it moved the new stock
// lease to the ended holder while the address sat in the kernel's stock
// for another holder to take; this machine found that.)
func TestStockStateMachine(t *testing.T) {
	f := newFixture(t)
	t.Logf("sessions: %s", f.kind)
	base := t.TempDir()
	tally := &stockTally{n: map[string]int{}}
	rapid.Check(t, func(t *rapid.T) {
		dir, err := os.MkdirTemp(base, "run")
		if err != nil {
			t.Fatal(err)
		}
		mc := &stockMachine{f: f, dir: dir, clk: &clock{t: time.Unix(1_800_000_000, 0)}, k: newModelKernel(),
			resolver: identity.NewResolver(f.identity, ""), tally: tally, logf: t.Logf}
		mc.perProgram = rapid.IntRange(0, 3).Draw(t, "perProgram") == 0
		mode := policy.PerSession
		if mc.perProgram {
			mode = policy.PerProgram
		}
		mc.settings = Settings{Policy: policy.Settings{Enabled: true, Mode: mode, Programs: policy.NewPrograms([]string{f.progA})},
			Admins: Admins{Users: []string{"60009"}}, OnExhausted: ExhaustedMachineIP, Grace: grace}
		mc.start(t)
		defer func() {
			for _, s := range mc.sessions {
				s.s.Close()
			}
			mc.settle(t)
			mc.d.store.Close()
		}()
		t.Repeat(map[string]func(*rapid.T){
			"logon":        mc.logon,
			"logoff":       mc.logoff,
			"startProgram": mc.startProgram,
			"stopProgram":  mc.stopProgram,
			"fill":         mc.fill,
			"shrink":       mc.shrink,
			"firstUse":     mc.firstUse,
			"beginCall":    mc.beginCall,
			"endCall":      mc.endCall,
			"race":         mc.race,
			"readEvent":    mc.readEvent,
			"query":        mc.query,
			"scan":         mc.scan,
			"restart":      mc.restart,
			"":             func(t *rapid.T) { mc.check(t) },
		})
	})
	t.Logf("what the runs did:%s", tally)
}

// The daemon path keeps the address the kernel gave the holder first: the
// address it acquired goes back and the kernel's stock lease becomes the
// holder's, whether the acquisition took the pool's last address or, the
// pool empty, one out of the kernel's stock. TestStockStateMachine found
// that the move always failed (the source refused to transfer a second
// lease to the holder), and the QUERY was answered as exhausted.
func TestKeepKernelsMovesTheKernelsAddress(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		// stock is how many stock places are filled: 3 empties the pool.
		stock int
		// before: the first call came before the QUERY, its event still
		// unread; otherwise it comes while the daemon acquires, its event
		// read then (and waiting for the acquisition) or later.
		before, readAtOnce bool
	}{
		{name: "pool, first call during the acquisition", stock: 2},
		{name: "pool, first call during the acquisition, event read at once", stock: 2, readAtOnce: true},
		{name: "pool, first call before", stock: 2, before: true},
		{name: "stock, first call during the acquisition", stock: 3},
		{name: "stock, first call during the acquisition, event read at once", stock: 3, readAtOnce: true},
		{name: "stock, first call before", stock: 3, before: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const uid = 61201
			mc := &stockMachine{f: f, dir: t.TempDir(), clk: &clock{t: time.Unix(1_800_000_000, 0)}, k: newModelKernel(),
				resolver: identity.NewResolver(f.identity, ""), tally: &stockTally{n: map[string]int{}}, logf: t.Logf,
				settings: Settings{Policy: policy.Settings{Enabled: true, Mode: policy.PerSession},
					OnExhausted: ExhaustedDeny, Grace: grace}}
			mc.start(t)
			defer mc.d.store.Close()
			s, err := loginsession.Start(context.Background(), f.kind, uid)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ms := &modelSession{s: s, uid: uid, procs: []proc{{pid: s.LeaderPID()}}}
			mc.sessions = append(mc.sessions, ms)
			h := lease.Holder{Session: mc.sessionID(ms)}
			if _, err := mc.d.m.FillStock(context.Background(), tc.stock, func(l lease.Lease) { mc.k.push(l.Addr) }); err != nil {
				t.Fatal(err)
			}
			// firstCall is assign(), with mc.k.mu held.
			var ev kcall
			firstCall := func() {
				a, ok := mc.k.popLocked()
				if !ok {
					t.Error("empty stock")
				}
				mc.k.setLocked(h, a)
				ev = kcall{h: h, uid: uid, vip: a}
			}
			var wg sync.WaitGroup
			mc.k.mu.Lock()
			if tc.before {
				firstCall()
				mc.pending = append(mc.pending, ev)
			} else {
				mc.k.duringClaim = func(lease.Holder) {
					firstCall()
					if tc.readAtOnce {
						wg.Go(func() { mc.deliver(ev) })
					} else {
						mc.pending = append(mc.pending, ev)
					}
				}
			}
			mc.k.mu.Unlock()
			c, err := mc.resolver.Resolve(s.LeaderPID(), uid, uid)
			if err != nil {
				t.Fatal(err)
			}
			got := mc.d.m.Query(context.Background(), c)
			wg.Wait()
			if got.Kind != wire.KindVIP || got.Lease.Addr != ev.vip {
				t.Fatalf("the kernel gave %s; the QUERY answered %s %s (%s)", ev.vip, got.Kind, got.Lease.Addr, got.Reason)
			}
			mc.check(t)
			for _, ev := range mc.pending {
				mc.deliver(ev)
			}
			mc.pending = nil
			mc.check(t)
			if free, stock := mc.d.src.Free(), len(mc.d.m.Stock()); free != 1 || stock != 1 {
				t.Fatalf("%d addresses free and %d stock leases, want 1 and 1: the acquired address went back", free, stock)
			}
		})
	}
}
