// Package runner replays a scenario file: it brings its topology up, starts
// the database server and the DHCP servers, then runs each phase's daemon,
// sessions, clients and timed steps, and judges the phase by its checks.
// It runs the real ipvirtd and ipvirtctl, and clients in real login
// sessions, and stops everything it started before it returns.
package runner

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ipvirt/ipvirt/internal/adapter"
	"github.com/ipvirt/ipvirt/internal/cgroup"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/dbserver"
	"github.com/ipvirt/ipvirt/sim/loginsession"
	"github.com/ipvirt/ipvirt/sim/scenario"
	"github.com/ipvirt/ipvirt/sim/scenario/check"
	"github.com/ipvirt/ipvirt/sim/scenario/topo"
)

// Options configure a run.
type Options struct {
	Out     io.Writer // the report (default os.Stdout)
	Log     *slog.Logger
	Metrics *Metrics // where connect latencies go (default: a private set)
	// Keep leaves the work directory (daemon configs, logs, state) behind.
	Keep bool
	// ClientEnv is added to every preloaded client's environment before
	// the scenario's own env (which wins). The test suite sets a longer
	// IPVIRT_TIMEOUT_MS there: it runs its scenarios beside every other
	// package's tests, where a freshly started daemon can miss the
	// library's 200 ms default and the client rightly falls back to the
	// machine IP. make demo and ipvirt-sim run keep the default.
	ClientEnv []string
}

// Result is what one scenario file showed.
type Result struct {
	Name    string
	WorkDir string // where the run kept its configs, logs and binaries
	Skipped string // why the scenario did not run, when it did not
	Phases  []PhaseResult
	Took    time.Duration
}

// Failed counts failed expectations.
func (r *Result) Failed() int {
	n := 0
	for _, p := range r.Phases {
		for _, o := range p.Outcomes {
			if !o.OK {
				n++
			}
		}
	}
	return n
}

// PhaseResult is one phase's clients and checks.
type PhaseResult struct {
	Name     string
	Skipped  string   // why the phase did not run, when it did not
	Notes    []string // timings worth reporting (a storm's time to the last client)
	Clients  []*check.ClientResult
	Server   []dbserver.Conn // what the database server saw, in order
	Outcomes []check.Outcome
}

// Run replays f. The error is for a run that could not be carried out (the
// daemon did not start, the run was interrupted); failed expectations are
// in the Result. Everything it started is stopped before it returns.
func Run(ctx context.Context, f *scenario.File, opts Options) (res *Result, err error) {
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	start := time.Now()
	res = &Result{Name: f.Name}
	defer func() { res.Took = time.Since(start) }()

	top, err := topo.New(&f.Topology)
	if err != nil {
		return res, err
	}
	if why := missing(f, top); why != "" {
		if os.Getenv("CI") == "true" {
			return res, fmt.Errorf("scenario %s: %s (CI=true: not skipping)", f.Name, why)
		}
		res.Skipped = why
		return res, nil
	}
	bins, err := findBinaries()
	if err != nil {
		return res, err
	}
	work, err := os.MkdirTemp("", "ipvirt-sim-")
	if err != nil {
		return res, err
	}
	if opts.Keep {
		fmt.Fprintf(opts.Out, "  (work directory kept: %s)\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	os.Chmod(work, 0o755) // clients in other users' sessions read their binaries here
	res.WorkDir = work

	r := &fileRun{f: f, opts: opts, topo: top, bins: bins, work: work, kind: sessionKind()}
	// Teardown runs on every return and on a panic, in reverse order of
	// what was started: sessions (per phase), daemon, DHCP, server, network.
	defer func() {
		if p := recover(); p != nil {
			r.teardown()
			panic(p)
		}
		r.teardown()
	}()
	if err := top.Up(ctx); err != nil {
		return res, fmt.Errorf("scenario %s: topology: %w", f.Name, err)
	}
	r.topoUp = true
	if os.Geteuid() == 0 {
		// A cgroup of its own for the run's sessions and clients, and the
		// daemon scoped to it: other login sessions on the host (other
		// test runs, a developer's SSH logins) are invisible to the
		// scenario's daemon, and its kernel programs touch none of them.
		if r.group, err = cgroup.Create(fmt.Sprintf("ipvirt-sim-%d-%d", os.Getpid(), groupSeq.Add(1))); err != nil {
			return res, fmt.Errorf("scenario %s: %w", f.Name, err)
		}
	}
	reg := prometheus.WrapRegistererWith(prometheus.Labels{"scenario": f.Name}, opts.Metrics.Registry)
	err = top.Do("server", func() error {
		var err error
		r.srv, err = dbserver.Listen(net.JoinHostPort(top.ServerAddr().String(), "0"), reg)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("scenario %s: database server: %w", f.Name, err)
	}
	if err := r.startDHCP(ctx); err != nil {
		return res, fmt.Errorf("scenario %s: %w", f.Name, err)
	}
	if err := r.startFarm(ctx); err != nil {
		return res, fmt.Errorf("scenario %s: %w", f.Name, err)
	}

	r.header()
	for i := range f.Phases {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("scenario %s: interrupted: %w", f.Name, err)
		}
		if why := phaseMissing(&f.Phases[i]); why != "" {
			if os.Getenv("CI") == "true" {
				return res, fmt.Errorf("scenario %s, phase %q: %s (CI=true: not skipping)", f.Name, f.Phases[i].Name, why)
			}
			res.Phases = append(res.Phases, PhaseResult{Name: f.Phases[i].Name, Skipped: why})
			fmt.Fprintf(opts.Out, "\n-- phase %d/%d: %s  SKIPPED: %s\n", i+1, len(f.Phases), f.Phases[i].Name, why)
			continue
		}
		pr, err := r.phase(ctx, i)
		if pr != nil {
			res.Phases = append(res.Phases, *pr)
		}
		if err != nil {
			return res, fmt.Errorf("scenario %s, phase %q: %w", f.Name, f.Phases[i].Name, err)
		}
	}
	return res, nil
}

// missing says what the scenario needs that this run does not have.
func missing(f *scenario.File, t topo.Topology) string {
	root := os.Geteuid() == 0
	if n, ok := t.(topo.NeedsRoot); ok && !root {
		return n.NeedsRoot()
	}
	for _, r := range f.Requires {
		if r == "root" && !root {
			return "needs root (audit login sessions)"
		}
	}
	return ""
}

// firstLineWith is the line of text that holds want (the daemon's error
// among its log), for the report.
func firstLineWith(text, want string) string {
	for line := range strings.Lines(text) {
		if strings.Contains(line, want) {
			return strings.TrimSpace(line)
		}
	}
	return text
}

// phaseMissing says what a phase needs that this run does not have.
func phaseMissing(p *scenario.Phase) string {
	if os.Geteuid() == 0 {
		return ""
	}
	if p.Interceptor == "bpf" {
		return "needs root (the kernel interceptor loads eBPF programs)"
	}
	if slices.Contains(p.Requires, "root") {
		return "needs root"
	}
	return ""
}

// sessionKind is audit when this process may create kernel login sessions,
// POSIX otherwise (unprivileged development).
func sessionKind() loginsession.Kind {
	if ok, _ := loginsession.Available(loginsession.Audit); ok {
		return loginsession.Audit
	}
	return loginsession.POSIX
}

type fileRun struct {
	f    *scenario.File
	opts Options
	topo topo.Topology
	bins binaries
	work string
	kind loginsession.Kind

	topoUp bool
	group  *cgroup.Group // the run's sessions and clients; nil when not root
	srv    *dbserver.Server
	dhcp   []*dhcpProc
	daemon *daemonproc.Daemon
	cfg    map[string]any // the daemon's current config
	farm   []*farmHost    // a farm's hosts 2..N (farm.go)
	etcd   []*etcdMember  // a farm's etcd cluster

	mu   sync.Mutex // guards live and the phase's results while clients run
	live []*liveSession
}

// groupSeq numbers the cgroups of one simulator's runs.
var groupSeq atomic.Int64

// wrap is how the run starts a session leader or a client: inside its
// cgroup, and on the topology's session host.
func (r *fileRun) wrap(argv []string) []string { return r.wrapOn(0, argv) }

func (r *fileRun) teardown() {
	r.mu.Lock()
	live := r.live
	r.live = nil
	r.mu.Unlock()
	closeSessions(live)
	r.stopDaemon()
	r.stopFarm()
	for _, p := range r.dhcp {
		p.stop()
	}
	r.dhcp = nil
	if r.srv != nil {
		r.srv.Close()
		r.srv = nil
	}
	if r.group != nil {
		if err := r.group.Remove(); err != nil {
			r.opts.Log.Warn("cgroup", "err", err)
		}
		r.group = nil
	}
	if r.topoUp {
		if err := r.topo.Down(); err != nil {
			r.opts.Log.Warn("topology down", "err", err)
		}
		r.topoUp = false
	}
}

func (r *fileRun) stopDaemon() {
	r.stopFarmDaemons()
	if r.daemon == nil {
		return
	}
	if err := r.daemon.Stop(syscall.SIGTERM); err != nil {
		r.opts.Log.Debug("ipvirtd exit", "err", err)
	}
	if r.opts.Keep {
		os.WriteFile(filepath.Join(r.daemon.Dir, "ipvirtd.log"), []byte(r.daemon.Logs()), 0o644)
	}
	r.daemon = nil
}

// closeSessions ends every session (killing its clients) and waits until
// the sessions are empty, so the next phase starts clean.
func closeSessions(live []*liveSession) {
	for _, s := range live {
		if err := s.close(); err != nil {
			slog.Debug("close session", "err", err)
		}
	}
}

func (r *fileRun) phase(ctx context.Context, i int) (*PhaseResult, error) {
	p := &r.f.Phases[i]
	pr := &PhaseResult{Name: p.Name}
	dir := filepath.Join(r.work, fmt.Sprintf("phase%d", i+1))
	progDir := filepath.Join(dir, "programs")
	if err := os.MkdirAll(progDir, 0o755); err != nil {
		return nil, err
	}
	os.Chmod(dir, 0o755)
	paths, err := r.installPrograms(p, progDir)
	if err != nil {
		return nil, err
	}
	if err := r.checkHosts(p); err != nil {
		return nil, err
	}
	if want := p.Expect.DaemonError; want != "" {
		o := check.Outcome{What: fmt.Sprintf("ipvirtd refuses to start with %q", want)}
		switch err := r.applyDaemon(ctx, p, dir, paths); {
		case err == nil:
			o.Got = "it started"
		case strings.Contains(err.Error(), want):
			o.OK = true
			o.Got = firstLineWith(err.Error(), want)
		default:
			o.Got = err.Error()
		}
		r.stopDaemon()
		pr.Outcomes = []check.Outcome{o}
		r.print(i, p, pr)
		return pr, nil
	}
	if err := r.applyDaemon(ctx, p, dir, paths); err != nil {
		return nil, err
	}
	if p.Interceptor == "bpf" {
		// A daemon that fell back to preload would make every client fail
		// with a misleading "left from the machine IP": say why instead.
		if state, err := r.interceptorState(); err != nil {
			return pr, err
		} else if !strings.HasPrefix(state, "bpf") && !strings.HasPrefix(state, "both") {
			return pr, fmt.Errorf("the kernel interceptor is not attached: ipvirtctl status says %q", state)
		}
	}
	env := &check.Env{Topology: r.topo, Interceptor: p.Interceptor, Daemon: r.daemon, DHCP: r.dhcpServers()}
	var ends []func(context.Context) []check.Outcome
	for _, x := range p.Expect.Checks {
		end, err := x.Check.Begin(ctx, env)
		if err != nil {
			return pr, fmt.Errorf("expect.%s: %w", x.Key, err)
		}
		ends = append(ends, end)
	}

	r.srv.Reset()
	ph := &phaseRun{r: r, p: p, paths: paths, start: time.Now(), vips: map[string]check.SessionRow{}, ran: map[string]chan struct{}{}}
	for _, g := range p.Sessions {
		ph.ran[g.Name] = make(chan struct{})
	}
	defer func() {
		r.mu.Lock()
		live := r.live
		r.live = nil
		r.mu.Unlock()
		closeSessions(live)
		r.srv.Drop()
	}()
	if err := ph.timeline(ctx); err != nil {
		return pr, err
	}
	pr.Clients = ph.clients
	pr.Notes = ph.notes
	report, raw, err := r.sessionsReport()
	if err != nil {
		return pr, err
	}
	ph.remember(report)
	for _, c := range pr.Clients {
		c.VIP = ph.vipOf(c)
	}
	pr.Server = r.srv.Seen()
	env.Daemon = r.daemon
	env.Clients, env.Report, env.ReportJSON, env.Server = pr.Clients, report, raw, pr.Server
	pr.Outcomes = append(ph.stepOutcomes, check.Clients(env)...)
	for _, end := range ends {
		pr.Outcomes = append(pr.Outcomes, end(ctx)...)
	}
	r.print(i, p, pr)
	return pr, nil
}

// clearAdapter removes the VIPs an earlier phase's daemon left on the
// adapter. A daemon stopped with SIGTERM keeps its leases, and so its
// addresses; a phase's fresh daemon, with a fresh lease file, would rightly
// refuse to start over them (a live holder may use them). Each phase starts
// from a clean host instead.
func (r *fileRun) clearAdapter(cfg map[string]any) { r.clearAdapterOn("session", cfg) }

// clearAdapterOn is clearAdapter on the topology's host.
func (r *fileRun) clearAdapterOn(host string, cfg map[string]any) {
	name, _ := cfg["adapter"].(string)
	if name == "" || strings.ContainsAny(name, ":/") { // a MAC address or a subnet: the topology's
		name = r.topo.Adapter()
	}
	label := adapter.Label(name)
	if name == "lo" || label == "" {
		return
	}
	argv := r.topo.Wrap(host, []string{"ip", "-4", "addr", "flush", "dev", name, "label", label})
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		r.opts.Log.Debug("clear the adapter's VIPs", "adapter", name, "err", err, "out", string(out))
	}
}

// applyDaemon gives the daemon this phase's config the way the phase says:
// a fresh daemon, a restart on the same state, or a reload.
func (r *fileRun) applyDaemon(ctx context.Context, p *scenario.Phase, dir string, paths map[string]string) error {
	cfg, err := r.daemonConfig(p, paths)
	if err != nil {
		return err
	}
	r.cfg = cfg
	body, err := marshalConfig(cfg)
	if err != nil {
		return err
	}
	switch {
	case p.Restart == "reload" && r.daemon != nil:
		return r.reload(ctx, body)
	case p.Restart == "restart" && r.daemon != nil:
		if err := r.daemon.Stop(syscall.SIGTERM); err != nil {
			r.opts.Log.Debug("ipvirtd exit", "err", err)
		}
		if err := r.daemon.WriteConfig(body); err != nil {
			return err
		}
		return r.startDaemon(ctx)
	}
	r.stopDaemon()
	r.clearAdapter(cfg)
	d, err := daemonproc.New(dir, body, true)
	if err != nil {
		return err
	}
	r.placeDaemon(d, "session")
	r.daemon = d
	if err := r.startDaemon(ctx); err != nil {
		return err
	}
	return r.startFarmDaemons(ctx, cfg, dir)
}

func (r *fileRun) startDaemon(ctx context.Context) error {
	if err := r.daemon.Start(ctx); err != nil {
		return fmt.Errorf("ipvirtd did not start: %w", err)
	}
	return nil
}

// reload rewrites the config, sends SIGHUP and waits until the daemon says
// it reloaded (STATUS's reloaded_at moves); a rejected file is an error
// carrying the daemon's log.
func (r *fileRun) reload(ctx context.Context, body string) error {
	before, err := r.reloadedAt()
	if err != nil {
		return err
	}
	if err := r.daemon.WriteConfig(body); err != nil {
		return err
	}
	if err := r.daemon.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if at, err := r.reloadedAt(); err == nil && at.After(before) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return fmt.Errorf("ipvirtd did not reload within 15s (config rejected?)\n%s", tail(r.daemon.Logs(), 20))
}

func (r *fileRun) reloadedAt() (time.Time, error) {
	c, err := r.daemon.Client()
	if err != nil {
		return time.Time{}, err
	}
	defer c.Close()
	st, err := c.Status()
	if err != nil {
		return time.Time{}, err
	}
	return st.ReloadedAt, nil
}
