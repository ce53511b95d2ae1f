package runner

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ipvirt/ipvirt/internal/cgroup"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/scenario"
	"github.com/ipvirt/ipvirt/sim/scenario/topo"
)

// A farm (topology kind farm) is host 1 (the topology's "session" host,
// with the run's own cgroup and daemon: r.group, r.daemon, as in every
// other topology) and hosts 2..N, each with a cgroup and an ipvirtd of its
// own. Each host's daemon is scoped to its host's cgroup: all hosts share
// one kernel, and a daemon that saw every host's sessions would allocate
// for them all. Hosts are numbered from 0 here, from 1 in scenario files.
type farmHost struct {
	name   string // the topology host: session2, ...
	group  *cgroup.Group
	daemon *daemonproc.Daemon
}

// farmTopo is the topology as a farm, or nil.
func (r *fileRun) farmTopo() topo.Farm {
	f, _ := r.topo.(topo.Farm)
	return f
}

// hosts is how many session hosts the run has.
func (r *fileRun) hosts() int { return 1 + len(r.farm) }

// hostName is host k's topology name.
func (r *fileRun) hostName(k int) string {
	if k == 0 {
		return "session"
	}
	return r.farm[k-1].name
}

func (r *fileRun) daemonOf(k int) *daemonproc.Daemon {
	if k == 0 {
		return r.daemon
	}
	return r.farm[k-1].daemon
}

// wrapOn starts a session leader or client on host k, in its cgroup.
func (r *fileRun) wrapOn(k int, argv []string) []string {
	argv = r.topo.Wrap(r.hostName(k), argv)
	g := r.group
	if k > 0 {
		g = r.farm[k-1].group
	}
	if g != nil {
		argv = g.Wrap(argv)
	}
	return argv
}

// hostOf is the host session i of group gi logs on to: the group's host,
// else round robin over the phase's sessions in file order.
func (r *fileRun) hostOf(p *scenario.Phase, gi, i int) int {
	if h := p.Sessions[gi].Host; h > 0 {
		return h - 1
	}
	n := i
	for j := 0; j < gi; j++ {
		n += p.Sessions[j].Count
	}
	return n % r.hosts()
}

// checkHosts refuses a phase whose groups name hosts the run lacks.
func (r *fileRun) checkHosts(p *scenario.Phase) error {
	for _, g := range p.Sessions {
		if g.Host > 0 && r.farmTopo() == nil {
			return fmt.Errorf("sessions %s: host %d: only a farm (topology kind farm) has several hosts", g.Name, g.Host)
		}
		if g.Host > r.hosts() {
			return fmt.Errorf("sessions %s: host %d: the farm has %d hosts", g.Name, g.Host, r.hosts())
		}
	}
	if r.farmTopo() != nil && (p.Restart == "reload" || p.Restart == "restart") {
		return fmt.Errorf("restart %s: a farm's phases start fresh daemons (not supported yet)", p.Restart)
	}
	return nil
}

// farmHostIndex reads a step's target "hostK" (K from 1).
func (r *fileRun) farmHostIndex(target string) (int, error) {
	k, err := strconv.Atoi(strings.TrimPrefix(target, "host"))
	if err != nil || !strings.HasPrefix(target, "host") || k < 1 || k > r.hosts() {
		return 0, fmt.Errorf("target %q: the run has hosts host1..host%d", target, r.hosts())
	}
	return k - 1, nil
}

// startFarm makes hosts 2..N's cgroups and starts the etcd cluster.
func (r *fileRun) startFarm(ctx context.Context) error {
	f := r.farmTopo()
	if f == nil {
		return nil
	}
	for _, name := range f.SessionHosts()[1:] {
		h := &farmHost{name: name}
		var err error
		if h.group, err = cgroup.Create(fmt.Sprintf("ipvirt-sim-%d-%d", os.Getpid(), groupSeq.Add(1))); err != nil {
			return fmt.Errorf("farm host %s: %w", name, err)
		}
		r.farm = append(r.farm, h)
	}
	return r.startEtcd(ctx, f)
}

// stopFarm stops what startFarm started (after the daemons).
func (r *fileRun) stopFarm() {
	for _, m := range r.etcd {
		m.stop()
	}
	r.etcd = nil
	for _, h := range r.farm {
		if h.group != nil {
			if err := h.group.Remove(); err != nil {
				r.opts.Log.Warn("cgroup", "err", err)
			}
		}
	}
	r.farm = nil
}

// farmDaemonKeys points a farm's `source: etcd` daemons at the run's
// cluster, and gives each phase a key prefix of its own: a phase's fresh
// daemons must not find the previous phase's keys, which outlive a daemon
// by up to its lease's TTL.
func (r *fileRun) farmDaemonKeys(cfg map[string]any, p *scenario.Phase) {
	if r.farmTopo() == nil || cfg["source"] != "etcd" {
		return
	}
	e, _ := cfg["etcd"].(map[string]any)
	e = merge(map[string]any{}, e)
	if _, ok := e["endpoints"]; !ok {
		var eps []any
		for _, m := range r.etcd {
			eps = append(eps, m.clientURL())
		}
		e["endpoints"] = eps
	}
	if _, ok := e["prefix"]; !ok {
		for i := range r.f.Phases {
			if &r.f.Phases[i] == p {
				e["prefix"] = fmt.Sprintf("/ipvirt-sim/phase%d/", i+1)
			}
		}
	}
	cfg["etcd"] = e
}

// startFarmDaemons starts hosts 2..N's daemons with host 1's config, each
// scoped to its host's cgroup.
func (r *fileRun) startFarmDaemons(ctx context.Context, cfg map[string]any, dir string) error {
	for k, h := range r.farm {
		if h.daemon != nil {
			h.daemon.Stop(syscall.SIGTERM)
			h.daemon = nil
		}
		c := merge(map[string]any{}, cfg)
		c["scope"] = h.group.Path
		r.clearAdapterOn(h.name, c)
		body, err := marshalConfig(c)
		if err != nil {
			return err
		}
		hdir := filepath.Join(dir, h.name)
		if err := os.MkdirAll(hdir, 0o755); err != nil {
			return err
		}
		d, err := daemonproc.New(hdir, body, true)
		if err != nil {
			return err
		}
		r.placeDaemon(d, h.name)
		h.daemon = d
		if err := d.Start(ctx); err != nil {
			return fmt.Errorf("ipvirtd on farm host %d did not start: %w", k+2, err)
		}
	}
	return nil
}

// placeDaemon runs d on host, and dials its HTTP port from there.
func (r *fileRun) placeDaemon(d *daemonproc.Daemon, host string) {
	d.Wrap = func(argv []string) []string { return r.topo.Wrap(host, argv) }
	d.DialHTTP = func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = r.topo.Do(host, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

func (r *fileRun) stopFarmDaemons() {
	for _, h := range r.farm {
		if h.daemon == nil {
			continue
		}
		if err := h.daemon.Stop(syscall.SIGTERM); err != nil {
			r.opts.Log.Debug("ipvirtd exit", "host", h.name, "err", err)
		}
		if r.opts.Keep {
			os.WriteFile(filepath.Join(h.daemon.Dir, "ipvirtd.log"), []byte(h.daemon.Logs()), 0o644)
		}
		h.daemon = nil
	}
}

// partitionTable is the nft table partition adds in a host's namespace.
const partitionTable = "ipvsim_partition"

// partition drops every packet between host k and the etcd members, both
// ways, silently (as a cut cable does: no resets, requests time out).
func (r *fileRun) partition(k int, on bool) error {
	var script string
	if on {
		var addrs []string
		for _, m := range r.etcd {
			addrs = append(addrs, m.addr.String())
		}
		set := strings.Join(addrs, ", ")
		script = fmt.Sprintf(`table inet %[1]s {
	chain out { type filter hook output priority 0; ip daddr { %[2]s } drop; }
	chain in { type filter hook input priority 0; ip saddr { %[2]s } drop; }
}
`, partitionTable, set)
	} else {
		script = "delete table inet " + partitionTable + "\n"
	}
	argv := r.topo.Wrap(r.hostName(k), []string{"nft", "-f", "-"})
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft on %s: %w: %s", r.hostName(k), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// etcdHealthy asks a member's /health from host's namespace: true when the
// cluster it is in has a leader (quorum).
func (r *fileRun) etcdHealthy(ctx context.Context, host string, m *etcdMember) error {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = r.topo.Do(host, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", m.clientURL()+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s: /health: %s", m.name, resp.Status)
	}
	return nil
}

// farmStep does the steps that act on one farm host or etcd member; it
// says false for the others (daemon steps without a target act on host 1,
// as in any topology).
func (r *fileRun) farmStep(ctx context.Context, s *scenario.Step) (bool, error) {
	switch s.Do {
	case "partition", "heal":
		k, err := r.farmHostIndex(s.Target)
		if err != nil {
			return true, err
		}
		return true, r.partition(k, s.Do == "partition")
	case "etcd-freeze", "etcd-thaw", "etcd-kill", "etcd-start":
		return true, r.etcdStep(s.Do, s.Target)
	case "kill-daemon", "stop-daemon", "start-daemon":
		if s.Target == "" {
			return false, nil
		}
		k, err := r.farmHostIndex(s.Target)
		if err != nil {
			return true, err
		}
		d := r.daemonOf(k)
		switch s.Do {
		case "kill-daemon":
			d.Stop(syscall.SIGKILL)
		case "stop-daemon":
			d.Stop(syscall.SIGTERM)
		default:
			if err := d.Start(ctx); err != nil {
				return true, fmt.Errorf("ipvirtd on %s did not start: %w", s.Target, err)
			}
		}
		return true, nil
	}
	return false, nil
}

// machineIPOf is host's own address (a farm host's), else the topology's.
func (r *fileRun) machineIPOf(host string) netip.Addr {
	if f := r.farmTopo(); f != nil && host != "" {
		return f.Addr(host)
	}
	return r.topo.MachineIP()
}
