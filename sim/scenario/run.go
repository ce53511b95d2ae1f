package scenario

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/dbserver"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// Options configure a run.
type Options struct {
	Out     io.Writer // the report (default os.Stdout)
	Log     *slog.Logger
	Metrics *Metrics // where connect latencies go (default: a private set)
	// Keep leaves the work directory (daemon configs, logs, state) behind.
	Keep bool
}

// Result is what one scenario file showed.
type Result struct {
	Name    string
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
	Clients  []*ClientResult
	Outcomes []Outcome
}

// Outcome is one checked expectation.
type Outcome struct {
	OK   bool
	What string // "accepted = 1"
	Got  string // what was seen, when it differs or helps
}

// PhaseEnv is what a registered check sees of a finished phase.
type PhaseEnv struct {
	Topology Topology
	Daemon   *daemonproc.Daemon
	Clients  []*ClientResult
	Report   []SessionRow
}

// Run replays f. The error is for a run that could not be carried out (the
// daemon did not start); failed expectations are in the Result.
func Run(ctx context.Context, f *File, opts Options) (res *Result, err error) {
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

	topo, err := f.buildTopology()
	if err != nil {
		return res, err
	}
	if why := f.missing(topo); why != "" {
		if os.Getenv("CI") == "true" {
			return res, fmt.Errorf("scenario %s: %s (CI=true: not skipping)", f.Name, why)
		}
		res.Skipped = why
		return res, nil
	}
	bins, err := FindBinaries()
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

	if err := topo.Up(ctx); err != nil {
		topo.Down()
		return res, fmt.Errorf("scenario %s: topology: %w", f.Name, err)
	}
	defer topo.Down()

	var srv *dbserver.Server
	reg := prometheus.WrapRegistererWith(prometheus.Labels{"scenario": f.Name}, opts.Metrics.Registry)
	err = topo.Do("server", func() error {
		var err error
		srv, err = dbserver.Listen(topo.ServerAddr().String()+":0", reg)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("scenario %s: database server: %w", f.Name, err)
	}
	defer srv.Close()

	r := &runner{f: f, opts: opts, topo: topo, bins: bins, work: work, srv: srv, kind: sessionKind()}
	r.header()
	for i := range f.Phases {
		if err := ctx.Err(); err != nil {
			return res, err
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
func (f *File) missing(t Topology) string {
	root := os.Geteuid() == 0
	for _, r := range f.Requires {
		if r == "root" && !root {
			return "needs root (audit login sessions)"
		}
	}
	if n, ok := t.(NeedsRoot); ok && !root {
		return n.NeedsRoot()
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

type runner struct {
	f    *File
	opts Options
	topo Topology
	bins Binaries
	work string
	srv  *dbserver.Server
	kind loginsession.Kind
}

func (r *runner) phase(ctx context.Context, i int) (*PhaseResult, error) {
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
	body, err := r.daemonConfig(p, paths)
	if err != nil {
		return nil, err
	}
	d, err := daemonproc.New(dir, body, true)
	if err != nil {
		return nil, err
	}
	if err := d.Start(ctx); err != nil {
		return nil, fmt.Errorf("ipvirtd did not start: %w\n%s", err, d.Logs())
	}
	defer func() {
		if err := d.Stop(syscall.SIGTERM); err != nil {
			r.opts.Log.Warn("ipvirtd stop", "err", err)
		}
		if r.opts.Keep {
			os.WriteFile(filepath.Join(dir, "ipvirtd.log"), []byte(d.Logs()), 0o644)
		}
	}()

	live, err := r.startSessions(ctx, p)
	defer closeSessions(live)
	if err != nil {
		return pr, err
	}
	r.srv.Reset()
	for _, s := range live {
		for k := range s.group.Run {
			c, err := r.runClient(ctx, d, p, s, &s.group.Run[k], paths, live)
			if err != nil {
				return pr, err
			}
			pr.Clients = append(pr.Clients, c)
			r.opts.Metrics.observe(p.Interceptor, c)
		}
	}
	report, err := r.sessionsReport(d)
	if err != nil {
		return pr, err
	}
	for _, c := range pr.Clients {
		c.VIP = report.vipOf(c)
	}
	env := &PhaseEnv{Topology: r.topo, Daemon: d, Clients: pr.Clients, Report: report}
	pr.Outcomes = r.check(ctx, p, env)
	r.print(i, p, pr)
	r.srv.Drop()
	return pr, nil
}

// closeSessions ends every session (killing its clients) and waits until
// the sessions are empty, so the next phase starts clean.
func closeSessions(live []*liveSession) {
	for _, s := range live {
		if err := s.close(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			slog.Debug("close session", "err", err)
		}
	}
}

// daemonConfig is the file's daemon section, the phase's overrides on top,
// then what the simulator decides: adapter, identity, interceptor, programs.
func (r *runner) daemonConfig(p *Phase, paths map[string]string) (string, error) {
	cfg := merge(merge(map[string]any{}, r.f.Daemon), p.Daemon)
	if _, ok := cfg["adapter"]; !ok {
		cfg["adapter"] = r.topo.Adapter()
	}
	if r.kind == loginsession.POSIX {
		cfg["session_identity"] = "posix"
	}
	if p.Interceptor == "bpf" {
		cfg["interceptor"] = "bpf"
	}
	if len(p.Programs) > 0 {
		var list []string
		for _, name := range p.Programs {
			list = append(list, paths[name])
		}
		cfg["programs"] = list
	}
	b, err := yaml.Marshal(cfg)
	return string(b), err
}

// merge lays src over dst, recursing into maps so that a phase can change
// one key of static_pool without restating the others.
func merge(dst, src map[string]any) map[string]any {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				dst[k] = merge(merge(map[string]any{}, dm), sm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

// installPrograms copies the client binaries under the names the phase
// uses, and names listed in programs: that no client runs.
func (r *runner) installPrograms(p *Phase, dir string) (map[string]string, error) {
	paths := map[string]string{}
	add := func(name, kind string) error {
		if _, ok := paths[name]; ok {
			return nil
		}
		src := r.bins.DBClient
		if kind == "go" {
			src = r.bins.Sim
		}
		dst, err := install(src, dir, name)
		paths[name] = dst
		return err
	}
	for _, g := range p.Sessions {
		for _, c := range g.Run {
			if err := add(c.Program, c.Kind); err != nil {
				return nil, err
			}
		}
	}
	for _, name := range p.Programs {
		if err := add(name, "c"); err != nil {
			return nil, err
		}
	}
	return paths, nil
}
