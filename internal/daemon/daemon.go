// Package daemon is ipvirtd: it checks the configuration against the host,
// restores the leases, serves the control socket and HTTP, reloads on
// SIGHUP and shuts down without releasing anything.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/ipvirt/ipvirt/internal/adapter"
	"github.com/ipvirt/ipvirt/internal/alloc"
	"github.com/ipvirt/ipvirt/internal/census"
	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/metrics"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/internal/server"
	"github.com/ipvirt/ipvirt/internal/source"
	"github.com/ipvirt/ipvirt/internal/source/dhcp"
	"github.com/ipvirt/ipvirt/internal/source/static"
	"github.com/ipvirt/ipvirt/internal/store"
	"github.com/ipvirt/ipvirt/internal/trust"
	"github.com/ipvirt/ipvirt/lsp/bpf"
)

// Version is set at build time (-ldflags -X).
var Version = "dev"

// Timeouts of the daemon itself; the socket server's are in internal/server.
const (
	// userCacheTTL is how long a user's name and groups are reused: an
	// administrator added to a group is recognised within it, and a logon
	// storm asks the user database (possibly LDAP) once per user rather
	// than once per process.
	userCacheTTL = 30 * time.Second
	// httpShutdownTimeout is how long a stop waits for HTTP requests in
	// flight: they are short reads of the daemon's state, and a restart,
	// which must be invisible to sessions, should not wait on a stalled
	// client.
	httpShutdownTimeout = 2 * time.Second
)

// Check validates the file and checks it against this host, as
// `ipvirtd --check` does: the adapter exists, the static pool lies in its
// subnet, and per-session mode is not configured on a multi-adapter host.
func Check(path string) (config.Config, adapter.Adapter, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return config.Config{}, adapter.Adapter{}, err
	}
	a, err := checkHost(cfg)
	return cfg, a, err
}

func checkHost(cfg config.Config) (adapter.Adapter, error) {
	if cfg.Adapter == "" {
		return adapter.Adapter{}, nil // only allowed when disabled
	}
	a, err := adapter.Resolve(cfg.Adapter)
	if err != nil {
		return a, err
	}
	if cfg.UsesPool() {
		if err := adapter.ValidatePool(cfg.StaticPool.Start, cfg.StaticPool.End, a); err != nil {
			return a, err
		}
	}
	if cfg.Enabled && cfg.Mode == policy.PerSession {
		if err := adapter.CheckPerSession(a); err != nil {
			return a, err
		}
	}
	return a, nil
}

// Daemon is a running ipvirtd.
type Daemon struct {
	path     string
	log      *slog.Logger
	adapter  adapter.Adapter
	store    *store.Store
	src      source.Source
	mgr      *alloc.Manager
	users    *identity.Users
	resolver identity.Resolver
	scanner  alloc.Scanner // finds the live sessions: the resolver, or a test's stand-in
	// programWarned is the last warning logged per program entry.
	programWarned map[string]string
	metrics       *metrics.Metrics
	unix          *server.Unix
	peers         *bpf.PeerRecords // nil: callers are identified from /proc
	started       time.Time

	// registry holds the sessions PAM registered; under session_trust: pam
	// the resolver counts no other audit session as a login.
	registry     *trust.Registry
	unregistered unregisteredLog

	kernel    *kernel  // nil: preload only
	stock     *stocker // with kernel
	kernelErr error    // why the configured kernel interceptor is not running
	census    *poolCensus

	events eventsRelay
	// ln is the control socket, claimed in New; adapterLock is held
	// while the daemon manages the adapter's VIPs (nil on loopback).
	ln          *net.UnixListener
	adapterLock *os.File
	mu          sync.Mutex // guards cfg and reloadedAt
	cfg         config.Config
	reloadedAt  time.Time
}

// New checks the configuration at path against the host, opens the store and
// restores the leases. Nothing is served until Run.
func New(path string, log *slog.Logger) (*Daemon, error) {
	return open(path, log, nil)
}

// open is New with the session scanner replaceable (tests); nil scans this
// host's sessions with the resolver.
func open(path string, log *slog.Logger, scanner alloc.Scanner) (*Daemon, error) {
	cfg, a, err := Check(path)
	if err != nil {
		return nil, err
	}
	// Claim the socket and the adapter before anything else: a second
	// daemon started by mistake must fail here, having changed no address,
	// map or pin of the one that runs.
	ln, err := server.Listen(cfg.Socket)
	if err != nil {
		return nil, err
	}
	fail := func(err error, closers ...io.Closer) (*Daemon, error) {
		for _, c := range closers {
			c.Close()
		}
		ln.Close()
		return nil, err
	}
	var adapterLock *os.File
	if (adapter.Installer{Adapter: a}).Needed() {
		if adapterLock, err = adapter.Lock(a); err != nil {
			return fail(err)
		}
	}
	st, err := store.Open(cfg.StateDir)
	if err != nil {
		return fail(err, adapterLock)
	}
	// Before Restore, which scans: under pam, the sessions it keeps leases
	// for are the registered ones.
	reg := trust.Open(st, alloc.ReadBootID(), log)
	resolver := identity.NewResolver(cfg.SessionIdentity, cfg.Scope)
	if cfg.SessionTrust == identity.TrustPAM {
		resolver.Registry = reg
	}
	d := &Daemon{path: path, log: log, adapter: a, store: st, cfg: cfg, started: time.Now(), ln: ln, adapterLock: adapterLock,
		users: identity.NewUsers(userCacheTTL), resolver: resolver, registry: reg}
	if scanner == nil {
		scanner = d.resolver
	}
	d.scanner = pruningScanner{Scanner: scanner, d: d}
	if err := d.build(); err != nil {
		return fail(err, st, adapterLock)
	}
	return d, nil
}

func (d *Daemon) build() error {
	src, err := d.newSource(d.cfg)
	if err != nil {
		return err
	}
	d.src = src
	dump, err := census.Open()
	if err != nil {
		src.Close()
		return err
	}
	d.census = &poolCensus{dump: dump, resolver: d.resolver}
	d.census.scope.Store(scopeFor(d.cfg, d.adapter, nil))
	var inst alloc.Installer
	if in := (adapter.Installer{Adapter: d.adapter}); in.Needed() {
		inst = in
	}
	d.mgr = alloc.New(alloc.Options{Source: src, Store: d.store, Installer: inst, Scanner: d.scanner,
		Users: d.users, MIP: d.adapter.MIP(), Log: d.log, Census: d.census, AcquireTimeout: pendingWait(d.cfg),
		CensusEveryGrant: d.cfg.Source != static.Name}, d.settings(d.cfg))
	d.events.m.Store(d.mgr)
	d.warnProgramsLocked() // nothing serves yet: no lock needed
	if d.cfg.Interceptor.Kernel() {
		// Before Restore: the observer sees every adopted lease as a grant.
		if k, err := openKernel(d.cfg, d.adapter.MIP(), d.log); err != nil {
			d.kernelErr = err
			d.log.Error("kernel interceptor unavailable; serving the preload interceptor only", "err", err)
		} else {
			d.kernel = k
			d.mgr.AddObserver(k)
			if d.cfg.KernelStockSize() > 0 {
				d.mgr.SetKernel(k)
			}
		}
	}
	fail := func(err error) error {
		if d.kernel != nil {
			if IsEvidence(err) {
				// Live holders' maps stay (as after SIGKILL): they are
				// evidence, and their sessions keep their VIPs while the
				// administrator looks.
				d.kernel.ic.Release()
			} else {
				d.kernel.ic.Close()
			}
		}
		dump.Close()
		src.Close()
		return err
	}
	// The evidence Restore changes is read before it.
	ev, err := d.evidenceBefore()
	if err != nil {
		return fail(err)
	}
	rep, err := d.mgr.Restore()
	if err != nil {
		return fail(err)
	}
	d.log.Info("leases restored", "adopted", rep.Adopted, "released", rep.Released,
		"host_rebooted", rep.Rebooted, "conflicts", rep.Conflicts)
	if !d.cfg.UsesPool() {
		// The restored leases say which subnet the server's addresses
		// come from.
		d.census.scope.Store(scopeFor(d.cfg, d.adapter, d.mgr.Leases()))
	}
	if err := d.crossCheck(ev, rep); err != nil {
		return fail(err)
	}
	if d.kernel != nil {
		d.kernel.reconcile(d.mgr.Leases())
		d.stock = newStocker(d, d.kernel)
		d.stock.configure(d.cfg)
		d.stock.reconcile()
	}
	if d.stock == nil {
		// No kernel to hand them out (it is unavailable, or no longer
		// configured): a previous run's stock goes back to the pool.
		for _, l := range d.mgr.Stock() {
			d.mgr.ReleaseStock(l.Addr)
		}
	}
	if in := (adapter.Installer{Adapter: d.adapter}); in.Needed() {
		var want []adapter.VIP
		for _, l := range d.mgr.Leases() {
			want = append(want, adapter.VIP{Addr: l.Addr, Bits: l.Subnet.Bits()})
		}
		added, removed, err := in.Reconcile(want)
		if err != nil {
			d.log.Error("reconcile adapter addresses", "err", err)
		}
		if len(added)+len(removed) > 0 {
			d.log.Info("adapter addresses reconciled", "added", added, "removed", removed)
		}
	}
	// Only now, with every holder the kernel shows adopted: a scan's
	// pre-allocation must not race them.
	d.mgr.Preallocate()
	d.metrics = metrics.New(d.mgr, d.store)
	if d.kernel != nil {
		d.metrics.Registry.MustRegister(d.kernel.collector())
	}
	if mp, ok := src.(source.MetricsProvider); ok {
		d.metrics.Registry.MustRegister(mp.Metrics())
	}
	return nil
}

// settings derives the manager's settings from a configuration and the
// run-time program changes persisted in the store.
func (d *Daemon) settings(cfg config.Config) alloc.Settings {
	return alloc.Settings{
		Policy:      policyFor(cfg, d.store.ProgramOverrides()),
		Admins:      cfg.Admins,
		OnExhausted: cfg.OnExhausted,
		Grace:       cfg.Grace.Std(),
		Prealloc:    cfg.PreallocateOn(),
	}
}

// Run serves until ctx is done, then shuts down. Leases are not released:
// a restart must be invisible to sessions. The store is closed, and Run
// returns, only after the scan loop and the kernel watcher have returned.
func (d *Daemon) Run(ctx context.Context) error {
	d.mu.Lock()
	cfg := d.cfg
	d.mu.Unlock()
	ln := d.ln
	resolver := d.resolver
	if d.peers = openPeers(cfg, d.log); d.peers != nil {
		resolver.Peers = d.peers
		defer d.peers.Close()
	}
	d.unix = &server.Unix{Backend: d, Resolver: resolver, Metrics: d.metrics, Log: d.log, PendingWait: pendingWait(cfg),
		SlowSource: cfg.Source == dhcp.Name}
	errc := make(chan error, 2)
	go func() { errc <- d.unix.Serve(ln) }()

	var hs *http.Server
	if cfg.HTTP != "" {
		hl, err := net.Listen("tcp", cfg.HTTP)
		if err != nil {
			d.unix.Close()
			return fmt.Errorf("http: listen %s: %w", cfg.HTTP, err)
		}
		hs = server.NewHTTP(d, d.metrics)
		hl = server.ListenHTTP(hl, d.metrics, d.log)
		go func() {
			if err := hs.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("http: %w", err)
			}
		}()
	}
	// The scan loop and the kernel watcher release and allocate leases:
	// shutdown waits for both before it closes the source and the store.
	var background sync.WaitGroup
	scanCtx, stopScan := context.WithCancel(context.Background())
	background.Go(func() { d.mgr.Run(scanCtx, cfg.ScanInterval.Std()) })
	if d.kernel != nil {
		// Returns once the interceptor is closed (its event channel closes).
		background.Go(func() {
			d.kernel.watch(func(sid, uid uint32, pid int) {
				if cfg.SessionTrust == identity.TrustPAM && !d.registry.Registered(sid) {
					// Reported at pam_loginuid, before PAM registers it (or
					// written by a service itself): the registration
					// pre-allocates, or the scan once registered.
					return
				}
				if cfg.Scope != "" {
					cg, err := d.resolver.Proc.Cgroup(pid)
					if err != nil || !identity.InScope(cg, cfg.Scope) {
						return // another subtree's session; a scan would not see it either
					}
				}
				d.mgr.Ensure(lease.Session{Kind: lease.KindAudit, ID: sid}, uid, "")
			}, func(ev bpf.Event) {
				en := bpf.Entry{Session: ev.Session}
				if d.Config().Mode == policy.PerProgram {
					en.Exe = ev.Exe
				}
				if ev.Kind == bpf.EventEmpty {
					// The holder left from the machine IP (or was
					// refused): give it a VIP the slow way too.
					d.stock.wake()
					if h, ok := d.stock.holder(en.Session, en.Exe); ok {
						d.mgr.Ensure(h.Session, ev.LoginUID, h.Program)
					}
					return
				}
				d.stock.assigned(en, ev.Addr, ev.LoginUID)
			})
		})
		background.Go(func() { d.stock.run(scanCtx) })
	}
	d.log.Info("ipvirtd ready", "version", Version, "socket", cfg.Socket, "http", cfg.HTTP,
		"mode", cfg.Mode, "enabled", cfg.Enabled, "source", cfg.Source, "adapter", d.adapter.Name,
		"machine_ip", d.adapter.MIP().String(), "session_identity", cfg.SessionIdentity, "session_trust", cfg.SessionTrust,
		"registered_sessions", d.registry.Len())
	if err := notifyReady(); err != nil {
		d.log.Warn("cannot tell the supervisor that ipvirtd is ready", "NOTIFY_SOCKET", os.Getenv("NOTIFY_SOCKET"), "err", err)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	stopScan()
	if hs != nil {
		sctx, cancel := context.WithTimeout(context.Background(), httpShutdownTimeout)
		hs.Shutdown(sctx)
		cancel()
	}
	d.unix.Close()
	if d.kernel != nil {
		// A clean stop detaches: nothing of ipvirt stays in the kernel
		// without a daemon to keep it true. (SIGKILL leaves the programs
		// attached and pinned; the next start adopts them.)
		if err := d.kernel.ic.Close(); err != nil {
			d.log.Error("kernel interceptor: detach", "err", err)
		} else {
			d.log.Info("kernel interceptor detached")
		}
	}
	background.Wait()
	d.src.Close()
	d.census.dump.Close()
	if err := d.store.Close(); err != nil && runErr == nil {
		runErr = err
	}
	d.log.Info("ipvirtd stopped; leases kept for the next start")
	return runErr
}

// Manager exposes the allocation manager (for integrations such as the
// kernel interceptor).
func (d *Daemon) Manager() *alloc.Manager { return d.mgr }

// MIP implements server.Backend.
func (d *Daemon) MIP() netip.Addr { return d.adapter.MIP() }

// pendingWait is how long a QUERY that has to wait for an allocation may
// take, and the manager's bound on one acquisition: a DHCP exchange is
// bounded by lease_wait (plus leaseWaitMargin, so that the DHCP client
// reports its own timeout first), a static allocation by alloc's default.
func pendingWait(cfg config.Config) time.Duration {
	if cfg.Source == dhcp.Name {
		wait := cfg.DHCP.LeaseWait
		if wait <= 0 {
			wait = dhcp.DefaultLeaseWait
		}
		return wait + leaseWaitMargin
	}
	return alloc.DefaultAcquireTimeout
}

// leaseWaitMargin lets the DHCP client's own lease_wait expire, and be
// counted and logged as a DHCP timeout, before the manager gives up.
const leaseWaitMargin = time.Second
