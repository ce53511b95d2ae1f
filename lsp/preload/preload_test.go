// Package preload tests libipvirt.so, the LD_PRELOAD interceptor (C, in
// this directory): real, unmodified programs (python3, curl, netcat, small C
// programs) run under the library in real login sessions against the real
// ipvirtd, and the address the server sees with accept() is checked.
package preload

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// Debian programs the tests drive, by absolute path: a PATH lookup could
// find a pyenv shim or another netcat.
const (
	python3 = "/usr/bin/python3"
	curlBin = "/usr/bin/curl"
	netcat  = "/bin/nc.openbsd"
)

var (
	buildOnce sync.Once
	buildDir  string // the library (unless $IPVIRT_BIN has one) and C probes
	libPath   string
	probePath string // testdata/sockprobe.c
	fdPath    string // testdata/fdprobe.c
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// requireTool fails (never skips) when a program the tests need is missing,
// naming the Debian package that provides it.
func requireTool(t testing.TB, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s not found: install the Debian package %s (scripts/deps.sh lists it)", path, pkg)
	}
}

// build makes the library (from $IPVIRT_BIN when it holds one, else with
// this directory's Makefile) and the C probe, once per test binary.
func build(t testing.TB) {
	t.Helper()
	buildOnce.Do(func() {
		if _, err := exec.LookPath("gcc"); err != nil {
			buildErr = errors.New("gcc not found: install the Debian packages gcc, libc6-dev and make (scripts/deps.sh lists them)")
			return
		}
		if buildDir, buildErr = os.MkdirTemp("", "ipvirt-preload-"); buildErr != nil {
			return
		}
		// Programs in the sessions may run as other users.
		os.Chmod(buildDir, 0o755)
		libPath = filepath.Join(buildDir, "libipvirt.so")
		if dir := os.Getenv(daemonproc.BinEnv); dir != "" {
			if p := filepath.Join(dir, "libipvirt.so"); fileExists(p) {
				libPath = p
			}
		}
		if libPath == filepath.Join(buildDir, "libipvirt.so") {
			if out, err := exec.Command("make", "-s", "-C", ".", "OUT="+buildDir).CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("make -C lsp/preload: %v\n%s", err, out)
				return
			}
		}
		probePath = filepath.Join(buildDir, "sockprobe")
		fdPath = filepath.Join(buildDir, "fdprobe")
		for _, p := range []string{probePath, fdPath} {
			src := filepath.Join("testdata", filepath.Base(p)+".c")
			if out, err := exec.Command("gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", p, src).CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("gcc %s: %v\n%s", src, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// probeScript is probe.py's absolute path (programs run elsewhere).
func probeScript(t testing.TB) string {
	t.Helper()
	p, err := filepath.Abs("testdata/probe.py")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// env is one test's ipvirtd, in the session kind this machine allows.
type env struct {
	t    *testing.T
	kind loginsession.Kind
	d    *daemonproc.Daemon
	ctl  string
}

// newEnv starts ipvirtd on a loopback pool (VIPs 127.77.0.x, machine IP
// 127.0.0.1) with HTTP metrics, plus any extra config. Nobody is an
// administrator, so that the test user's sessions are virtualized.
func newEnv(t *testing.T, extra string) *env {
	t.Helper()
	build(t)
	kind, identity := loginsession.POSIX, "posix"
	if ok, _ := loginsession.Available(loginsession.Audit); ok {
		kind, identity = loginsession.Audit, "audit"
	}
	body := fmt.Sprintf("adapter: lo\nsource: static\nsession_identity: %s\ngrace: 1s\nscan_interval: 100ms\nadmins: {users: [], groups: []}\n", identity)
	if !strings.Contains(extra, "static_pool") {
		body += "static_pool: {start: 127.77.0.10, end: 127.77.0.250, subnet_mask: 255.255.255.0}\n"
	}
	d, err := daemonproc.New(t.TempDir(), body+extra, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Stop(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("ipvirtd log:\n%s", d.Logs())
		}
	})
	ctl, err := daemonproc.Binary("ipvirtctl")
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, kind: kind, d: d, ctl: ctl}
}

// session opens a login session for uid that ends with the test.
func (e *env) session(uid uint32) *loginsession.Session {
	e.t.Helper()
	s, err := loginsession.Start(context.Background(), e.kind, uid)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { s.Close() })
	return s
}

// preloadEnv is the environment that puts a program under the library and
// points it at this test's daemon.
func (e *env) preloadEnv(extra ...string) []string {
	return append([]string{"LD_PRELOAD=" + libPath, "IPVIRT_SOCKET=" + e.d.Socket}, extra...)
}

// vip asks the daemon, from inside the session (ipvirtctl whoami, a WHOAMI
// request: not counted as a QUERY), which VIP the session has.
func (e *env) vip(s *loginsession.Session) string {
	e.t.Helper()
	res := runIn(e.t, s, nil, e.ctl, "--socket", e.d.Socket, "whoami")
	// "VIP 127.77.0.10/24 (mask ...) for a:42"
	f := strings.Fields(res.stdout)
	if res.code != 0 || len(f) < 2 || f[0] != "VIP" {
		e.t.Fatalf("session %d has no VIP: ipvirtctl whoami said %q %q", s.ID, res.stdout, res.stderr)
	}
	ip, _, _ := strings.Cut(f[1], "/")
	return ip
}

// queries is how many QUERY requests the daemon has served.
func (e *env) queries() int {
	e.t.Helper()
	v, err := e.d.Metric("ipvirt_request_duration_seconds_count", `op="query"`)
	if err != nil {
		e.t.Fatal(err)
	}
	return int(v)
}

// result is a finished program.
type result struct {
	stdout, stderr string
	code           int
	elapsed        time.Duration
}

// line returns the RESULT of the first probe line for op ("IP PORT" or
// "errno N"), failing the test when there is none.
func (r result) line(t testing.TB, op string) string {
	t.Helper()
	for _, l := range strings.Split(r.stdout, "\n") {
		if rest, ok := strings.CutPrefix(l, op+" "); ok {
			return rest
		}
	}
	t.Fatalf("no %q line in the program's output:\n%s\nstderr:\n%s", op, r.stdout, r.stderr)
	return ""
}

// ip returns the address of the probe line for op.
func (r result) ip(t testing.TB, op string) string {
	t.Helper()
	return strings.Fields(r.line(t, op))[0]
}

// ipvirtLines are the library's stderr lines.
func (r result) ipvirtLines() []string {
	var out []string
	for _, l := range strings.Split(r.stderr, "\n") {
		if strings.HasPrefix(l, "ipvirt:") {
			out = append(out, l)
		}
	}
	return out
}

// started is a program running in a session; its stdout is a FIFO read
// line by line, so a test can act on what the program printed.
type started struct {
	t      testing.TB
	s      *loginsession.Session
	pid    int
	lines  chan string
	dir    string
	start  time.Time
	stdout strings.Builder
}

// startIn runs argv in session s with env added, under `timeout` so that a
// hung program cannot hang the test.
func startIn(t testing.TB, s *loginsession.Session, env []string, argv ...string) *started {
	t.Helper()
	return startInput(t, s, env, "", argv...)
}

// startInput is startIn with input on the program's stdin.
func startInput(t testing.TB, s *loginsession.Session, env []string, input string, argv ...string) *started {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o777)
	fifo := filepath.Join(dir, "out")
	if err := syscall.Mkfifo(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(dir, "in")
	if err := os.WriteFile(in, []byte(input), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `o=$1 e=$2 r=$3 i=$4; shift 4; timeout --foreground -s KILL 60 "$@" <"$i" >"$o" 2>"$e"; echo $? >"$r"`
	args := append([]string{"-c", script, "sh", fifo, filepath.Join(dir, "err"), filepath.Join(dir, "rc"), in}, argv...)
	p := &started{t: t, s: s, lines: make(chan string, 256), dir: dir, start: time.Now()}
	opened := make(chan *os.File, 1)
	go func() {
		f, err := os.Open(fifo) // blocks until the shell opens it
		if err != nil {
			close(opened)
			return
		}
		opened <- f
	}()
	pid, err := s.RunEnv(env, "/bin/sh", args...)
	if err != nil {
		t.Fatal(err)
	}
	p.pid = pid
	var f *os.File
	select {
	case f = <-opened:
	case <-time.After(30 * time.Second):
		t.Fatalf("%v never started", argv)
	}
	if f == nil {
		t.Fatalf("%v: cannot open its output", argv)
	}
	go func() {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	return p
}

// wait collects the rest of the output and the exit status.
func (p *started) wait() result {
	p.t.Helper()
	for l := range p.lines {
		p.stdout.WriteString(l + "\n")
	}
	p.s.Reap(p.pid)
	res := result{stdout: p.stdout.String(), elapsed: time.Since(p.start)}
	b, _ := os.ReadFile(filepath.Join(p.dir, "err"))
	res.stderr = string(b)
	rc, err := os.ReadFile(filepath.Join(p.dir, "rc"))
	if err != nil {
		p.t.Fatalf("no exit status: %v", err)
	}
	res.code, _ = strconv.Atoi(strings.TrimSpace(string(rc)))
	return res
}

// runIn runs a program to completion in session s.
func runIn(t testing.TB, s *loginsession.Session, env []string, argv ...string) result {
	t.Helper()
	return startIn(t, s, env, argv...).wait()
}

// runPlain runs a program outside any test session, for tests against a
// stand-in daemon, which does not care who asks.
func runPlain(t testing.TB, env []string, argv ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	res := result{stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%v: %v", argv, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("%v hung (killed after 60 s); stderr:\n%s", argv, res.stderr)
	}
	return res
}

// tcpServer accepts on 127.0.0.1 and reports each client's address as the
// kernel gave it to accept(). It reads each connection to its end, then
// closes it.
type tcpServer struct {
	l     net.Listener
	peers chan netip.AddrPort
}

func newTCPServer(t testing.TB) *tcpServer {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpServer{l: l, peers: make(chan netip.AddrPort, 1024)}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			s.peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
			go func() {
				io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return s
}

func (s *tcpServer) port() string { return strconv.Itoa(s.l.Addr().(*net.TCPAddr).Port) }

// next returns the address of the next accepted client.
func (s *tcpServer) next(t testing.TB) string {
	t.Helper()
	select {
	case p := <-s.peers:
		return p.Addr().Unmap().String()
	case <-time.After(30 * time.Second):
		t.Fatal("the server accepted no connection in 30 s")
	}
	return ""
}

// udpServer reports the source address of each datagram it receives.
type udpServer struct {
	c     *net.UDPConn
	peers chan netip.AddrPort
}

func newUDPServer(t testing.TB) *udpServer {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &udpServer{c: c, peers: make(chan netip.AddrPort, 64)}
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			s.peers <- from
		}
	}()
	t.Cleanup(func() { c.Close() })
	return s
}

func (s *udpServer) port() string { return strconv.Itoa(s.c.LocalAddr().(*net.UDPAddr).Port) }

func (s *udpServer) next(t testing.TB) string {
	t.Helper()
	select {
	case p := <-s.peers:
		return p.Addr().Unmap().String()
	case <-time.After(30 * time.Second):
		t.Fatal("the UDP server received nothing in 30 s")
	}
	return ""
}
