package daemon_test

// The set-up every test of this package shares: a config, a state
// directory and a real ipvirtd process (sim/daemonproc), sessions to ask
// it from, and ipvirtd --check on a config file.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/backend/api"
	"github.com/ipvirt/ipvirt/backend/client"
	"github.com/ipvirt/ipvirt/internal/cgroup"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// env is one test's daemon and session kind.
type env struct {
	t    *testing.T
	kind loginsession.Kind
	d    *daemonproc.Daemon
	ctl  string
	// group holds the test's sessions, and the daemon is scoped to it, so
	// that login sessions of other tests running at the same time (other
	// packages, the scenarios) are invisible to it; nil when not root.
	group *cgroup.Group
	// wrap is how the test's sessions start (into group, into a network
	// namespace); nil: as they are.
	wrap func(argv []string) []string
}

// groupSeq numbers the cgroups of this test binary.
var groupSeq atomic.Int64

func sessionKind() (loginsession.Kind, string) {
	if ok, _ := loginsession.Available(loginsession.Audit); ok {
		return loginsession.Audit, "audit"
	}
	return loginsession.POSIX, "posix"
}

// daemonConfig prefixes body with what every test daemon runs with: the
// session identity of this machine, and grace and scan intervals short
// enough for releases to happen within a test. A key body sets itself
// keeps body's value (YAML refuses a key given twice): the tests of one
// key's effect (keys_test.go) set these too.
func daemonConfig(body string) string {
	_, identity := sessionKind()
	var prefix string
	for _, kv := range [][2]string{{"session_identity", identity}, {"grace", "1s"}, {"scan_interval", "100ms"}} {
		if !hasKey(body, kv[0]) {
			prefix += kv[0] + ": " + kv[1] + "\n"
		}
	}
	return prefix + body
}

// hasKey reports whether the YAML body sets the top-level key.
func hasKey(body, key string) bool {
	return regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + `:`).MatchString(body)
}

// staticConfig is a static source on loopback, with a default pool unless
// extra has one of its own. The default pool is this package's alone: the
// daemon counts sockets bound to its pool as holders (the start-up
// cross-check, the pre-grant check), and other packages' tests run
// sessions bound to VIPs of theirs (lsp/preload: 127.77.0.x) at the same
// time.
func staticConfig(extra string) string {
	body := "adapter: lo\nsource: static\n"
	if !strings.Contains(extra, "static_pool") {
		body += "static_pool: {start: 127.70.0.10, end: 127.70.0.250, subnet_mask: 255.255.255.0}\n"
	}
	return body + extra
}

// newEnv starts ipvirtd with a loopback static pool and the given extra
// config.
func newEnv(t *testing.T, extra string) *env {
	t.Helper()
	return newEnvBody(t, staticConfig(extra))
}

// newEnvBody starts ipvirtd, in a state directory of its own, on
// daemonConfig(body); it is killed at the end of the test, and its log
// shown if the test failed.
func newEnvBody(t *testing.T, body string) *env {
	t.Helper()
	var group *cgroup.Group
	if os.Geteuid() == 0 {
		var err error
		if group, err = cgroup.Create(fmt.Sprintf("ipvirt-test-%d-%d", os.Getpid(), groupSeq.Add(1))); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { group.Remove() })
		body += "scope: " + group.Path + "\n"
	}
	d, err := daemonproc.New(t.TempDir(), daemonConfig(body), true)
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, d, nil)
	if group != nil {
		e.group, e.wrap = group, group.Wrap
	}
	return e
}

// startEnv starts d as the test's daemon, stopped at the end of the test
// (its log shown if the test failed); the env's sessions start through
// wrap (nil: as they are).
func startEnv(t *testing.T, d *daemonproc.Daemon, wrap func(argv []string) []string) *env {
	t.Helper()
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// SIGTERM, not SIGKILL: a daemon with the kernel interceptor then
		// detaches and removes its pins, even after a test that failed.
		d.Stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("ipvirtd log:\n%s", d.Logs())
		}
	})
	ctl, err := daemonproc.Binary("ipvirtctl")
	if err != nil {
		t.Fatal(err)
	}
	kind, _ := sessionKind()
	return &env{t: t, kind: kind, d: d, ctl: ctl, wrap: wrap}
}

// start starts the stopped daemon again, on the same state directory.
func (e *env) start() {
	e.t.Helper()
	if err := e.d.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

// restart stops the daemon with sig and starts it again.
func (e *env) restart(sig syscall.Signal) {
	e.t.Helper()
	e.d.Stop(sig)
	e.start()
}

// client dials the daemon; the connection is closed with the test.
func (e *env) client() *client.Client {
	e.t.Helper()
	c, err := e.d.Client()
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// dial opens a raw connection to the daemon's socket that gives up after
// timeout; it is closed with the test at the latest.
func (e *env) dial(timeout time.Duration) net.Conn {
	e.t.Helper()
	c, err := net.Dial("unix", e.d.Socket)
	if err != nil {
		e.t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(timeout))
	e.t.Cleanup(func() { c.Close() })
	return c
}

// ctlCmd is an ipvirtctl command line against this daemon.
func (e *env) ctlCmd(args ...string) *exec.Cmd {
	return exec.Command(e.ctl, append([]string{"--socket", e.d.Socket}, args...)...)
}

// session opens a login session for uid that ends with the test.
func (e *env) session(uid uint32) *loginsession.Session {
	e.t.Helper()
	s, err := loginsession.StartWrapped(context.Background(), e.kind, uid, e.wrap)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { s.Close() })
	return s
}

// whoami runs `ipvirtctl -o json whoami` inside the session, as a real
// process of it, and returns the daemon's answer; flags are ipvirtctl's
// further global flags (--timeout).
func (e *env) whoami(s *loginsession.Session, flags ...string) (api.WhoamiReport, error) {
	out := filepath.Join(e.t.TempDir(), "whoami.json")
	pid, err := s.Run("/bin/sh", append([]string{"-c", `out=$1; shift; exec "$@" -o json whoami > "$out" 2>&1`, "sh", out, e.ctl, "--socket", e.d.Socket}, flags...)...)
	if err != nil {
		return api.WhoamiReport{}, err
	}
	s.Reap(pid)
	b, err := os.ReadFile(out)
	if err != nil {
		return api.WhoamiReport{}, err
	}
	var r api.WhoamiReport
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("whoami said %q: %w", b, err)
	}
	return r, nil
}

func (e *env) mustVIP(s *loginsession.Session) string {
	e.t.Helper()
	r, err := e.whoami(s)
	if err != nil {
		e.t.Fatal(err)
	}
	if r.Result != "vip" {
		e.t.Fatalf("session %d got %s (%s), want a VIP", s.ID, r.Result, r.Reason)
	}
	return r.VIP
}

// sessionRow is the `sessions` row of session id.
func (e *env) sessionRow(id uint32) (api.SessionReport, bool) {
	e.t.Helper()
	c, err := e.d.Client()
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	rows, err := c.Sessions()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, r := range rows {
		if r.ID == id {
			return r, true
		}
	}
	return api.SessionReport{}, false
}

// sessionVIP is the VIP `sessions` lists for session id, "" if none: what
// the daemon holds for a session none of whose processes has asked.
func (e *env) sessionVIP(id uint32) string {
	e.t.Helper()
	r, _ := e.sessionRow(id)
	return r.VIP
}

func (e *env) leases() int {
	e.t.Helper()
	v, err := e.d.Metric("ipvirt_leases_active")
	if err != nil {
		e.t.Fatal(err)
	}
	return int(v)
}

// eventually polls cond for up to 20 s: releases happen on the daemon's
// scan ticks, and a loaded CI machine may be slow.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkConfig writes body to a config file and runs `ipvirtd --check` on
// it, behind the command line in wrap when given (e.g. `ip netns exec`),
// and returns its output and exit status.
func checkConfig(t *testing.T, body string, wrap ...string) (string, int) {
	t.Helper()
	bin, err := daemonproc.Binary("ipvirtd")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ipvirt.yaml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := append(append([]string(nil), wrap...), bin, "--check", "--config", path)
	return run(t, exec.Command(argv[0], argv[1:]...))
}

// run runs cmd and returns its combined output and exit status; a command
// that could not run at all fails the test.
func run(t *testing.T, cmd *exec.Cmd) (string, int) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// cBinary finds a C artifact of `make build` (IPVIRT_BIN, which make test
// sets, else bin/ of the checkout); `go test` alone has not built them.
func cBinary(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv(daemonproc.BinEnv)
	if dir == "" {
		dir = filepath.Join("..", "..", "bin")
	}
	p, err := filepath.Abs(filepath.Join(dir, name))
	if err == nil {
		_, err = os.Stat(p)
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s: %v (make build makes it)", name, err)
		}
		t.Skipf("needs %s from make build (make test builds it): %v", name, err)
	}
	return p
}
