package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/loginsession"
	"github.com/ipvirt/ipvirt/sim/scenario"
	"github.com/ipvirt/ipvirt/sim/scenario/check"
)

// defaultUID is the first login uid given to sessions whose group names
// none: ordinary users (uid 0 would be root, an administrator).
const defaultUID = 1001

// liveSession is one started session of a group.
type liveSession struct {
	group *scenario.SessionGroup
	index int
	label string                // "alice#2"
	sess  *loginsession.Session // nil for a no-session group
	key   string                // the daemon's session key: a:42, p:1234
	uid   uint32
	host  int         // the farm host it runs on (0: host 1, the only one elsewhere)
	procs []*exec.Cmd // no-session clients
}

func (s *liveSession) close() error {
	for _, c := range s.procs {
		loginsession.KillGroup(c)
		c.Wait()
	}
	if s.sess != nil {
		return s.sess.Close()
	}
	return nil
}

// startSession starts session i of group gi (or, for a no-session group,
// just a record: its clients are started directly by the simulator).
func (r *fileRun) startSession(ctx context.Context, p *scenario.Phase, gi, i int) (*liveSession, error) {
	g := &p.Sessions[gi]
	s := &liveSession{group: g, index: i, label: g.Name, uid: r.uidOf(p, gi, i), host: r.hostOf(p, gi, i)}
	wrap := func(argv []string) []string { return r.wrapOn(s.host, argv) }
	if g.Count > 1 {
		s.label = fmt.Sprintf("%s#%d", g.Name, i+1)
	}
	if g.NoSession {
		if err := outsideAnySession(r.kind); err != nil {
			return nil, fmt.Errorf("group %s: %w", g.Name, err)
		}
		s.key = "-"
		s.uid = uint32(os.Getuid())
	} else {
		sess, err := loginsession.StartWrapped(ctx, r.kind, s.uid, wrap)
		if err != nil {
			return nil, fmt.Errorf("group %s: %w", g.Name, err)
		}
		s.sess = sess
		if sess.Kind == loginsession.Audit {
			s.key = fmt.Sprintf("a:%d", sess.ID)
		} else {
			s.key = fmt.Sprintf("p:%d", sess.ID)
			s.uid = uint32(os.Getuid())
		}
	}
	r.mu.Lock()
	r.live = append(r.live, s)
	r.mu.Unlock()
	return s, nil
}

// outsideAnySession checks that processes started directly by the
// simulator are in no login session, as a system service is.
func outsideAnySession(kind loginsession.Kind) error {
	if kind != loginsession.Audit {
		return fmt.Errorf("no_session needs audit sessions (run as root): with POSIX sessions every process is in one")
	}
	b, err := os.ReadFile("/proc/self/sessionid")
	if err != nil {
		return err
	}
	if id := strings.TrimSpace(string(b)); id != "4294967295" {
		return fmt.Errorf("no_session: the simulator itself runs in audit session %s, so its children would too; run it from a service or cron", id)
	}
	return nil
}

var resultSeq atomic.Int64

// runClient starts one client in its session and waits for its result.
func (r *fileRun) runClient(ctx context.Context, ph *phaseRun, s *liveSession, spec *scenario.Client) (*check.ClientResult, error) {
	p, paths := ph.p, ph.paths
	out := filepath.Join(r.work, fmt.Sprintf("result-%d", resultSeq.Add(1)))
	args := []string{"--out", out}
	if spec.Hold == nil || *spec.Hold {
		args = append(args, "--hold")
	}
	if spec.Bind != "" {
		addr, err := r.resolveBind(spec.Bind)
		if err != nil {
			return nil, err
		}
		args = append(args, "--bind", addr.String())
	}
	args = append(args, r.topo.ServerAddr().String(), strconv.Itoa(int(r.srv.Addr().Port())))
	prog := paths[spec.Program]
	if spec.Kind == "go" {
		args = append([]string{"client"}, args...)
	}
	var env []string
	if p.Interceptor == "preload" {
		env = []string{"LD_PRELOAD=" + r.bins.Preload, "IPVIRT_SOCKET=" + r.daemonOf(s.host).Socket}
		env = append(env, r.opts.ClientEnv...)
	}
	env = append(env, spec.Env...)
	errPath := out + ".stderr"
	var pid int
	var err error
	if s.sess != nil {
		pid, err = s.sess.RunEnvStderr(env, errPath, prog, args...)
	} else {
		argv := r.wrapOn(s.host, append([]string{prog}, args...))
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), env...)
		if f, ferr := os.Create(errPath); ferr == nil {
			cmd.Stderr = f
			defer f.Close() // the child has its own copy once started
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
		if err = cmd.Start(); err == nil {
			pid = cmd.Process.Pid
			r.mu.Lock()
			s.procs = append(s.procs, cmd)
			r.mu.Unlock()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", spec.Program, s.label, err)
	}
	res := &check.ClientResult{Group: s.group.Name, Session: s.label, Key: s.key, UID: s.uid, Host: r.hostName(s.host),
		Expect: &spec.Expect, Name: spec.Program, Program: prog, Interceptor: p.Interceptor}
	line, err := waitResult(ctx, out, pid)
	if b, rerr := os.ReadFile(errPath); rerr == nil {
		res.Stderr = strings.TrimSpace(string(b))
	}
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w (stderr: %q)", spec.Program, s.label, err, res.Stderr)
	}
	return res, parseResult(res, line)
}

// waitResult waits for the client's result file (written atomically).
func waitResult(ctx context.Context, path string, pid int) (string, error) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil {
			return strings.TrimSpace(string(b)), nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			if b, err := os.ReadFile(path); err == nil {
				return strings.TrimSpace(string(b)), nil
			}
			return "", fmt.Errorf("client pid %d exited without a result", pid)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return "", fmt.Errorf("no result from client pid %d after 20s", pid)
}

// parseResult reads the client's "source=A:P verdict=V connect_ns=N errno=E" into c.
func parseResult(c *check.ClientResult, line string) error {
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "source":
			if v != "-" {
				ap, err := netip.ParseAddrPort(v)
				if err != nil {
					return fmt.Errorf("client result %q: %w", line, err)
				}
				c.Source = ap
			}
		case "verdict":
			c.Verdict = v
		case "connect_ns":
			n, _ := strconv.ParseInt(v, 10, 64)
			c.Connect = time.Duration(n)
		case "errno":
			if v != "0" {
				c.Errno = v
			}
		}
	}
	if c.Verdict == "" {
		return fmt.Errorf("client result %q: no verdict", line)
	}
	return nil
}

func (r *fileRun) resolveBind(spec string) (netip.Addr, error) {
	a, ref, err := scenario.ParseBind(spec)
	if err != nil || ref == nil {
		return a, err
	}
	rows, _, err := r.sessionsReport()
	if err != nil {
		return a, err
	}
	r.mu.Lock()
	live := append([]*liveSession(nil), r.live...)
	r.mu.Unlock()
	for _, s := range live {
		if s.group.Name == ref.Group && s.index == ref.Index-1 {
			for _, row := range rows {
				if row.Session == s.key && row.VIP != "" {
					return netip.ParseAddr(row.VIP)
				}
			}
			return a, fmt.Errorf("bind %q: session %s has no VIP yet (run a client in it first)", spec, s.label)
		}
	}
	return a, fmt.Errorf("bind %q: no such session", spec)
}

type report []check.SessionRow

// sessionsReport runs the real `ipvirtctl sessions -o json`, the report an
// administrator reads, so the scenario checks it rather than internals.
//
// In a farm the rows of every host's daemon are put together (session keys
// are the kernel's, unique across hosts); a host whose daemon does not
// answer (killed by a step) adds none.
func (r *fileRun) sessionsReport() (report, []byte, error) {
	rows, raw, err := r.hostReport(r.daemon)
	if err != nil {
		return nil, nil, err
	}
	for _, h := range r.farm {
		if h.daemon == nil {
			continue
		}
		more, _, err := r.hostReport(h.daemon)
		if err != nil {
			r.opts.Log.Debug("farm host report", "host", h.name, "err", err)
			continue
		}
		rows = append(rows, more...)
	}
	if len(r.farm) > 0 {
		if raw, err = json.Marshal(rows); err != nil {
			return nil, nil, err
		}
	}
	return rows, raw, nil
}

// hostReport is `ipvirtctl sessions -o json` of one daemon.
func (r *fileRun) hostReport(d *daemonproc.Daemon) (report, []byte, error) {
	cmd := exec.Command(r.bins.IPVirtctl, "--socket", d.Socket, "sessions", "-o", "json")
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = strings.TrimSpace(string(ee.Stderr))
		}
		return nil, nil, fmt.Errorf("ipvirtctl sessions: %w %s", err, stderr)
	}
	var rows report
	if err := json.Unmarshal(out, &rows); err != nil {
		return nil, nil, fmt.Errorf("ipvirtctl sessions -o json: %w", err)
	}
	return rows, out, nil
}

// interceptorState is the interceptor row of `ipvirtctl status`.
func (r *fileRun) interceptorState() (string, error) {
	out, err := exec.Command(r.bins.IPVirtctl, "--socket", r.daemon.Socket, "status", "-o", "json").Output()
	if err != nil {
		return "", fmt.Errorf("ipvirtctl status: %w", err)
	}
	var st struct {
		Interceptor string `json:"interceptor"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return "", fmt.Errorf("ipvirtctl status -o json: %w", err)
	}
	return st.Interceptor, nil
}

// waitAllocated waits until ipvirtctl reports a VIP for session key, at
// most limit; it gives up silently (the client's expectation then tells
// what happened: a session the daemon never virtualizes has no VIP).
func (r *fileRun) waitAllocated(ctx context.Context, key string, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if rep, _, err := r.sessionsReport(); err == nil {
			for _, row := range rep {
				if row.Session == key && row.VIP != "" {
					return
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// vipOf is the VIP the report gives c's holder: its program's in
// per-program mode, else its session's.
func (rep report) vipOf(c *check.ClientResult) netip.Addr {
	for _, row := range rep {
		if row.Session != c.Key {
			continue
		}
		for _, p := range row.Programs {
			if p.Program == c.Program && p.VIP != "" {
				a, _ := netip.ParseAddr(p.VIP)
				return a
			}
		}
		if row.VIP != "" {
			a, _ := netip.ParseAddr(row.VIP)
			return a
		}
	}
	return netip.Addr{}
}
