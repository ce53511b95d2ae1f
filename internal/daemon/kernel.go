package daemon

import (
	"errors"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/lsp/bpf"
)

// kernel is the eBPF interceptor as the daemon runs it: the maps follow the
// manager's grants and releases (an alloc.Observer), and the kernel's
// reports (refused binds, new sessions) are logged and acted on.
type kernel struct {
	ic  *bpf.Interceptor
	log *slog.Logger

	mu     sync.Mutex
	exeIDs map[string]bpf.ExeID // listed program path → its executable
}

// openKernel loads and attaches the interceptor, or adopts the one a
// killed daemon left pinned. A host that cannot run it (no BTF, no cgroup2,
// not root) gets a clear error; the daemon then runs preload-only, never
// half-attached (bpf.Open undoes its own partial work).
func openKernel(cfg config.Config, mip netip.Addr, log *slog.Logger) (*kernel, error) {
	opts, err := kernelOptions(cfg, mip, log)
	if err != nil {
		return nil, err
	}
	ic, err := bpf.Open(opts)
	if err != nil {
		return nil, err
	}
	k := &kernel{ic: ic, log: log, exeIDs: map[string]bpf.ExeID{}}
	log.Info("kernel interceptor attached", "cgroup", ic.CgroupPath(), "pins", ic.PinDir(),
		"adopted", ic.Adopted(), "enforce", opts.Enforce, "session_events", ic.SessionEvents())
	return k, nil
}

// kernelOptions is what the configuration asks of the kernel interceptor:
// enforce, the pin directory state_dir names, scope's cgroup as the attach
// point, and the static pool (the addresses enforcement guards).
func kernelOptions(cfg config.Config, mip netip.Addr, log *slog.Logger) (bpf.Options, error) {
	opts := bpf.Options{Enforce: cfg.EnforceOn(), MachineIP: mip, ReplaceStale: true, Logger: log, PinDir: cfg.PinDir()}
	if cfg.Scope != "" {
		dir, err := bpf.CgroupDir(cfg.Scope)
		if err != nil {
			return bpf.Options{}, err
		}
		opts.CgroupPath = dir
	}
	if cfg.UsesPool() {
		opts.Pool = []bpf.Range{{Start: cfg.StaticPool.Start, End: cfg.StaticPool.End}}
	}
	return opts, nil
}

// exe returns the ExeID of a listed program path, cached: per-program
// entries are keyed by the executable the kernel sees, not by its name.
func (k *kernel) exe(path string) (bpf.ExeID, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if id, ok := k.exeIDs[path]; ok {
		return id, nil
	}
	id, err := bpf.ExeIDFromPath(path)
	if err == nil {
		k.exeIDs[path] = id
	}
	return id, err
}

// path is the listed program whose executable is id, among those exe has
// resolved.
func (k *kernel) path(id bpf.ExeID) (string, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for p, x := range k.exeIDs {
		if x == id {
			return p, true
		}
	}
	return "", false
}

// TakeStock implements alloc.KernelClaims.
func (k *kernel) TakeStock() (netip.Addr, bool) {
	a, ok, err := k.ic.PopStock()
	if err != nil {
		k.log.Error("kernel interceptor: take from the stock", "err", err)
	}
	return a, ok
}

// entryOf is the kernel's key for h: its audit session and, per program,
// its executable; ok is false for a holder the kernel has no entry for
// (not an audit session, or a program whose executable cannot be read).
func (k *kernel) entryOf(h lease.Holder) (sid uint32, exe bpf.ExeID, ok bool) {
	if h.Session.Kind != lease.KindAudit {
		return 0, bpf.ExeID{}, false
	}
	if h.Program != "" {
		id, err := k.exe(h.Program)
		if err != nil {
			return 0, bpf.ExeID{}, false // Granted logs it
		}
		exe = id
	}
	return h.Session.ID, exe, true
}

// Entry implements alloc.KernelClaims.
func (k *kernel) Entry(h lease.Holder) (netip.Addr, bool) {
	sid, exe, ok := k.entryOf(h)
	if !ok {
		return netip.Addr{}, false
	}
	return k.ic.Entry(sid, exe)
}

// Claim implements alloc.KernelClaims.
func (k *kernel) Claim(h lease.Holder, addr netip.Addr) (netip.Addr, error) {
	sid, exe, ok := k.entryOf(h)
	if !ok {
		return addr, nil
	}
	return k.ic.Claim(sid, exe, addr)
}

// Granted implements alloc.Observer. Stock leases are the stocker's.
func (k *kernel) Granted(l lease.Lease) {
	h := l.Holder
	if h.Session.Kind != lease.KindAudit {
		return
	}
	var err error
	if h.Program == "" {
		err = k.ic.SetSession(h.Session.ID, l.Addr)
	} else {
		var id bpf.ExeID
		if id, err = k.exe(h.Program); err == nil {
			err = k.ic.SetProgram(h.Session.ID, id, l.Addr)
		}
	}
	if err != nil {
		k.log.Error("kernel interceptor: add entry", "holder", h.Key(), "vip", l.Addr, "err", err)
	}
}

// Released implements alloc.Observer.
func (k *kernel) Released(l lease.Lease) {
	h := l.Holder
	if h.Session.Kind != lease.KindAudit {
		return
	}
	var err error
	if h.Program == "" {
		err = k.ic.DeleteSession(h.Session.ID)
	} else {
		var id bpf.ExeID
		if id, err = k.exe(h.Program); err == nil {
			err = k.ic.DeleteProgram(h.Session.ID, id)
		}
	}
	if err != nil && !errors.Is(err, bpf.ErrClosed) {
		k.log.Error("kernel interceptor: remove entry", "holder", h.Key(), "vip", l.Addr, "err", err)
	}
}

// reconcile drops map entries an adopted interceptor holds for leases the
// restored store no longer has (holders that ended while no daemon ran).
func (k *kernel) reconcile(leases []lease.Lease) {
	entries, err := k.ic.Entries()
	if err != nil {
		k.log.Error("kernel interceptor: list entries", "err", err)
		return
	}
	live := map[netip.Addr]bool{}
	for _, l := range leases {
		live[l.Addr] = true
	}
	for _, e := range entries {
		if live[e.VIP] {
			continue
		}
		if e.Exe.IsZero() {
			err = k.ic.DeleteSession(e.Session)
		} else {
			err = k.ic.DeleteProgram(e.Session, e.Exe)
		}
		k.log.Info("kernel interceptor: dropped a stale entry", "session", e.Session, "vip", e.VIP, "err", err)
	}
}

// watch logs what the kernel reports until its channel closes. New
// sessions are allocated at once (ensure), so their first connect finds a
// VIP in the map; without session events the periodic scan does it. The
// session and exec hooks see the whole host whatever the scope: ensure
// gets the reporting pid to tell.
func (k *kernel) watch(ensure func(sid, uid uint32, pid int), assigned func(ev bpf.Event)) {
	for ev := range k.ic.Events() {
		switch ev.Kind {
		case bpf.EventAssigned, bpf.EventEmpty:
			assigned(ev)
		case bpf.EventDenied:
			// Bind and send hooks name the caller; the packet hooks
			// (egress, ingress) the socket's creator, once a second.
			k.log.Warn("kernel interceptor refused another holder's address", "session", ev.Session, "pid", ev.PID,
				"uid", ev.UID, "comm", ev.Comm, "addr", ev.Addr, "hook", ev.Hook, "holder_session", ev.Owner)
		case bpf.EventSession, bpf.EventMiss, bpf.EventExec:
			ensure(ev.Session, ev.LoginUID, int(ev.PID))
		}
	}
}

// collector exports the kernel counters.
func (k *kernel) collector() prometheus.Collector { return kernelCollector{k} }

type kernelCollector struct{ k *kernel }

var (
	bpfDeniedDesc = prometheus.NewDesc("ipvirt_bpf_denied_total",
		"Binds and sends the kernel interceptor refused with EPERM (another holder's VIP, or a pool address not held).", nil, nil)
	bpfBoundDesc = prometheus.NewDesc("ipvirt_bpf_rewrites_total",
		"Sockets the kernel interceptor gave a VIP, by hook.", []string{"hook"}, nil)
	bpfAssignedDesc = prometheus.NewDesc("ipvirt_bpf_assigned_total",
		"VIPs the kernel interceptor took from the stock at a holder's first socket call.", nil, nil)
	bpfEmptyDesc = prometheus.NewDesc("ipvirt_bpf_stock_empty_total",
		"First socket calls that found the kernel's stock empty (left from the machine IP, or refused with on_exhausted: deny).", nil, nil)
)

func (c kernelCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- bpfDeniedDesc
	ch <- bpfBoundDesc
	ch <- bpfAssignedDesc
	ch <- bpfEmptyDesc
}

func (c kernelCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.k.ic.Stats()
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(bpfDeniedDesc, prometheus.CounterValue, float64(st.Denied))
	ch <- prometheus.MustNewConstMetric(bpfBoundDesc, prometheus.CounterValue, float64(st.ConnectBound), "connect")
	ch <- prometheus.MustNewConstMetric(bpfBoundDesc, prometheus.CounterValue, float64(st.SendmsgSource), "sendmsg")
	ch <- prometheus.MustNewConstMetric(bpfBoundDesc, prometheus.CounterValue, float64(st.BindRewritten), "bind")
	ch <- prometheus.MustNewConstMetric(bpfAssignedDesc, prometheus.CounterValue, float64(st.Assigned))
	ch <- prometheus.MustNewConstMetric(bpfEmptyDesc, prometheus.CounterValue, float64(st.StockEmpty))
}
