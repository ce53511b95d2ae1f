package daemon

import (
	"bufio"
	"context"
	"errors"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ipvirt/ipvirt/internal/alloc"
	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/lsp/bpf"
)

// First-use assignment (issue 11): the kernel hands a holder a VIP from a
// stock at its first connect, unconnected send or wildcard bind, so that no
// first call waits for the daemon or its scan. The daemon keeps the stock
// (leases acquired ahead, installed, persisted under stock holders), tells
// the kernel the rules (administrators, registered sessions, listed
// programs), and moves each handed-out lease to its holder.

// stocker keeps the kernel's stock full and turns its assignments into
// leases.
type stocker struct {
	d    *Daemon
	k    *kernel
	kick chan struct{}
	// regMu orders syncRegistered's copy of the registry against the
	// registrations and closes of single sessions (OpenSession,
	// CloseSession): a copy read before a registration must not reach the
	// kernel after it and take the session back out, just as PAM goes on
	// to start its shell.
	regMu sync.Mutex

	mu       sync.Mutex
	target   int
	lastErr  string    // why the last fill fell short ("" when full)
	loggedAt time.Time // of lastErr
	// queued are the stock addresses pushed into the kernel's stock (and
	// some since handed out, until the next fill forgets them): a stock
	// lease counts in status only once the kernel can hand it out, not
	// from when it is acquired.
	queued map[netip.Addr]bool
	// found are administrators /etc/passwd does not list (a directory
	// service's), learnt from their sessions' assignments: kept in the
	// kernel's map across refreshes.
	found []uint32
}

// adminsRefresh is how often the kernel's administrators are read again
// from /etc/passwd and the group database (the users cache's own TTL
// bounds how fresh a membership is).
const adminsRefresh = 30 * time.Second

// stockSettleTime is how long start-up waits, after taking the stock out
// of the kernel, for a first call that had popped an address to finish
// recording it in the map: such a call runs for microseconds.
const stockSettleTime = 100 * time.Millisecond

func newStocker(d *Daemon, k *kernel) *stocker {
	return &stocker{d: d, k: k, kick: make(chan struct{}, 1), queued: map[netip.Addr]bool{}}
}

// wake asks for a fill soon.
func (s *stocker) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// configure applies cfg: the rules the kernel applies by itself and the
// stock's size. Called at start and at every reload, with d.mu held.
func (s *stocker) configure(cfg config.Config) {
	s.mu.Lock()
	s.target = cfg.KernelStockSize()
	s.mu.Unlock()
	ic := s.k.ic
	s.setAdmins(cfg.Admins)
	var ids []bpf.ExeID
	if cfg.Mode == policy.PerProgram {
		for _, e := range s.d.programsFor(cfg) {
			if id, err := s.k.exe(e.Path); err == nil {
				ids = append(ids, id)
			}
		}
	}
	if err := ic.SetProgramsOfInterest(ids); err != nil {
		s.d.log.Error("kernel interceptor: listed programs", "err", err)
	}
	fu := bpf.FirstUse{
		Assign:        cfg.Enabled && s.target > 0,
		TrustPAM:      cfg.SessionTrust == identity.TrustPAM,
		PerProgram:    cfg.Mode == policy.PerProgram,
		DenyExhausted: cfg.OnExhausted == alloc.ExhaustedDeny,
	}
	if err := ic.SetFirstUse(fu); err != nil {
		s.d.log.Error("kernel interceptor: first-use assignment", "err", err)
	}
	s.wake()
}

// syncRegistered copies the registered sessions into the kernel.
func (s *stocker) syncRegistered() {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	var ids []uint32
	for _, r := range s.d.registry.All() {
		ids = append(ids, r.ID)
	}
	if err := s.k.ic.SetRegistered(ids); err != nil {
		s.d.log.Error("kernel interceptor: registered sessions", "err", err)
	}
}

// setAdmins gives the kernel the login uids a names, and those found.
func (s *stocker) setAdmins(a alloc.Admins) {
	s.mu.Lock()
	found := slices.Clone(s.found)
	s.mu.Unlock()
	uids := adminUIDs(s.d.users, a)
	for _, uid := range found {
		if s.d.users.IsAdmin(uid, a.Users, a.Groups) { // still, after a reload
			uids = append(uids, uid)
		}
	}
	if err := s.k.ic.SetAdmins(uids); err != nil {
		s.d.log.Error("kernel interceptor: administrators", "err", err)
	}
}

// adminUIDs lists the uids of /etc/passwd that the admins setting names
// (by name, uid or group), as the rules judge them, plus uids listed by
// number. Users only a directory service knows are judged when their
// assignment is reported (see assigned).
func adminUIDs(u *identity.Users, a alloc.Admins) []uint32 {
	var out []uint32
	for _, name := range a.Users {
		if n, err := strconv.ParseUint(name, 10, 32); err == nil {
			out = append(out, uint32(n))
		}
	}
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 3 {
			continue
		}
		n, err := strconv.ParseUint(fields[2], 10, 32)
		if err == nil && u.IsAdmin(uint32(n), a.Users, a.Groups) {
			out = append(out, uint32(n))
		}
	}
	return out
}

// reconcile runs at start, before serving: it takes the stock out of the
// kernel, moves every stock lease the maps show handed out (while no daemon
// ran, or before its event was read) to its holder, and puts the rest back.
// Addresses in the kernel's stock that no stock lease backs are dropped.
func (s *stocker) reconcile() {
	ic := s.k.ic
	queued, err := ic.DrainStock()
	if err != nil {
		s.d.log.Error("kernel interceptor: read the stock", "err", err)
	}
	inQueue := map[netip.Addr]bool{}
	for _, a := range queued {
		inQueue[a] = true
	}
	var missing []lease.Lease
	handed := s.handedOut()
	for _, l := range s.d.mgr.Stock() {
		switch {
		case handed[l.Addr] != nil:
			s.assigned(*handed[l.Addr], l.Addr, bpf.NoSession)
		case inQueue[l.Addr]:
			s.push(l.Addr)
		default:
			missing = append(missing, l)
		}
		delete(inQueue, l.Addr)
	}
	if len(missing) > 0 {
		// Popped by a first call that had not yet recorded it, or never
		// pushed (a crash between persisting and pushing): look again
		// once any such call is done.
		time.Sleep(stockSettleTime)
		// A call that lost its race (two first calls of one holder both
		// popped; the other inserted) has pushed its address back
		// meanwhile: take the stock out again, so that no address goes
		// in twice and is handed to two holders (found by the model in
		// internal/alloc's TestStockStateMachine).
		again, err := ic.DrainStock()
		if err != nil {
			s.d.log.Error("kernel interceptor: read the stock", "err", err)
		}
		back := map[netip.Addr]bool{}
		for _, a := range again {
			back[a] = true
			s.push(a)
		}
		handed = s.handedOut()
		for _, l := range missing {
			if handed[l.Addr] != nil {
				s.assigned(*handed[l.Addr], l.Addr, bpf.NoSession)
			} else if !back[l.Addr] {
				s.push(l.Addr)
			}
		}
	}
	for a := range inQueue {
		s.d.log.Warn("kernel interceptor: stock address without a stock lease dropped", "vip", a.String())
	}
}

// handedOut maps each VIP in the kernel's session and program entries to
// its entry.
func (s *stocker) handedOut() map[netip.Addr]*bpf.Entry {
	entries, err := s.k.ic.Entries()
	if err != nil {
		s.d.log.Error("kernel interceptor: list entries", "err", err)
	}
	out := map[netip.Addr]*bpf.Entry{}
	for i := range entries {
		out[entries[i].VIP] = &entries[i]
	}
	return out
}

func (s *stocker) push(a netip.Addr) {
	if err := s.k.ic.PushStock(a); err != nil {
		s.d.log.Error("kernel interceptor: stock", "vip", a.String(), "err", err)
		return
	}
	s.mu.Lock()
	s.queued[a] = true
	s.mu.Unlock()
}

// holder is the holder an entry or event names, "" program when the
// executable is not (or no longer) a listed program's.
func (s *stocker) holder(sid uint32, exe bpf.ExeID) (lease.Holder, bool) {
	h := lease.Holder{Session: lease.Session{Kind: lease.KindAudit, ID: sid}}
	if exe.IsZero() {
		return h, true
	}
	path, ok := s.k.path(exe)
	h.Program = path
	return h, ok
}

// assigned records that the kernel gave en's holder the stock address a;
// loginUID is the session's user when the event names it.
func (s *stocker) assigned(en bpf.Entry, a netip.Addr, loginUID uint32) {
	h, ok := s.holder(en.Session, en.Exe)
	if !ok {
		s.d.log.Error("kernel interceptor: assignment to an executable no listed program names", "session", en.Session, "exe", en.Exe, "vip", a.String())
		return
	}
	uid := loginUID
	if uid == bpf.NoSession {
		uid = s.d.mgr.SessionUID(h.Session)
	}
	_, err := s.d.mgr.Assigned(h, a, uid)
	switch {
	case err == nil:
		if uid != bpf.NoSession && s.d.mgr.IsAdmin(uid) {
			// Only a directory service knows this administrator: the
			// map did not. Its sessions get no more VIPs from now on.
			s.d.log.Warn("kernel interceptor gave a VIP to an administrator's session not in /etc/passwd; added to the kernel's administrators",
				"session", h.Session.String(), "uid", uid, "vip", a.String())
			s.mu.Lock()
			s.found = append(s.found, uid)
			s.mu.Unlock()
			s.d.mu.Lock()
			admins := s.d.cfg.Admins
			s.d.mu.Unlock()
			s.setAdmins(admins)
		}
	case errors.Is(err, alloc.ErrStale):
		s.d.log.Info("kernel interceptor: an assignment report overtaken (its holder's entry is gone or names another address)", "holder", h.Key(), "vip", a.String())
	case errors.Is(err, alloc.ErrNotStock):
		s.d.log.Error("kernel interceptor handed out an address that is no stock lease", "holder", h.Key(), "vip", a.String())
	default:
		s.d.log.Error("kernel interceptor: assignment not recorded", "holder", h.Key(), "vip", a.String(), "err", err)
	}
	s.wake()
}

// run keeps the stock full until ctx is done: at every kick (an
// assignment, an empty stock, a reload) and every second.
func (s *stocker) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastAdmins := time.Now()
	for {
		s.fill(ctx)
		s.syncRegistered()
		if time.Since(lastAdmins) >= adminsRefresh {
			// A user added to an administrators' group since start.
			lastAdmins = time.Now()
			s.d.mu.Lock()
			admins := s.d.cfg.Admins
			s.d.mu.Unlock()
			s.setAdmins(admins)
		}
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-t.C:
		}
	}
}

// fill acquires stock leases up to the target and hands them to the
// kernel; past the target (a reload shrank it) it takes addresses back out
// of the kernel's stock and releases them.
func (s *stocker) fill(ctx context.Context) {
	stock := s.d.mgr.Stock()
	s.mu.Lock()
	target := s.target
	// Forget addresses that are no stock lease's any more (handed out,
	// released), before one can come back as a stock lease not yet
	// pushed.
	live := make(map[netip.Addr]bool, len(stock))
	for _, l := range stock {
		live[l.Addr] = true
	}
	for a := range s.queued {
		if !live[a] {
			delete(s.queued, a)
		}
	}
	s.mu.Unlock()
	for range len(stock) - target { // none unless a reload shrank it
		if a, ok, err := s.k.ic.PopStock(); err == nil && ok {
			s.d.mgr.ReleaseStock(a)
		}
	}
	if len(stock) >= target {
		return
	}
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	fresh, err := s.d.mgr.FillStock(fctx, target, func(l lease.Lease) { s.push(l.Addr) })
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.lastErr = ""
		return
	}
	if msg := err.Error(); msg != s.lastErr || time.Since(s.loggedAt) > time.Minute {
		s.lastErr, s.loggedAt = msg, time.Now()
		s.d.log.Warn("kernel interceptor stock not full", "have", len(stock)+len(fresh), "want", target, "err", err)
	}
}

// status is one line for ipvirtctl status.
func (s *stocker) status() string {
	stock := s.d.mgr.Stock()
	s.mu.Lock()
	target, lastErr := s.target, s.lastErr
	n := 0
	for _, l := range stock {
		if s.queued[l.Addr] {
			n++
		}
	}
	s.mu.Unlock()
	if target == 0 {
		return "off (kernel_stock: 0): VIPs come from pre-allocation and the scan"
	}
	line := "VIPs at first use from a stock of " + strconv.Itoa(n) + "/" + strconv.Itoa(target)
	if lastErr != "" {
		line += " (short: " + lastErr + ")"
	}
	return line
}
