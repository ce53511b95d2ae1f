// Package daemonproc runs the real ipvirtd binary as a child process, for
// the simulator and for integration tests: write a config, start, wait until
// the socket answers, signal it (SIGTERM, SIGKILL, SIGHUP), restart it.
package daemonproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ipvirt/ipvirt/backend/client"
)

// BinEnv names the directory holding built binaries (make sets it to bin/).
const BinEnv = "IPVIRT_BIN"

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binary returns the path of an ipvirt command (ipvirtd, ipvirtctl,
// ipvirt-sim): from $IPVIRT_BIN, else bin/ of the module, else built once
// into a temporary directory with `go build`.
func Binary(name string) (string, error) {
	if dir := os.Getenv(BinEnv); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("daemonproc: %s: %w (run make build)", p, err)
		}
		return p, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", fmt.Errorf("daemonproc: %w; set %s", err, BinEnv)
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ipvirt-bin-")
		if buildErr != nil {
			return
		}
		// Tests run the binaries as other users too.
		os.Chmod(buildDir, 0o755)
		cmd := exec.Command("go", "build", "-o", buildDir+"/", "./cmd/...")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("daemonproc: go build ./cmd/...: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		return "", buildErr
	}
	return filepath.Join(buildDir, name), nil
}

// ModuleRoot finds the directory of go.mod above the working directory:
// the source tree to build binaries from when IPVIRT_BIN names none.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Daemon is a running (or stopped) ipvirtd.
type Daemon struct {
	Dir    string // holds ipvirt.yaml, the state dir and the socket
	Config string // path of ipvirt.yaml
	Socket string
	HTTP   string // host:port, "" when disabled
	// Extra are arguments added to the command line (e.g. --log-level).
	Extra []string
	// Wrap, when set, rewrites the command line before it runs (to start
	// the daemon inside a network namespace); it must exec its argument.
	Wrap func(argv []string) []string
	// DialHTTP, when set, dials the daemon's HTTP address for Metric (from
	// inside the daemon's network namespace).
	DialHTTP func(ctx context.Context, network, addr string) (net.Conn, error)
	// Bin, when set, is the ipvirtd to run instead of Binary("ipvirtd"):
	// another build's, for a benchmark that compares the two.
	Bin string

	mu   sync.Mutex
	cmd  *exec.Cmd
	logs *LockedBuffer
	done chan struct{}
	err  error
}

// New prepares a daemon in dir with the given config body. The body is the
// YAML of ipvirt.yaml without state_dir, socket and http, which New fills in
// (http on a free loopback port unless withHTTP is false).
func New(dir, body string, withHTTP bool) (*Daemon, error) {
	d := &Daemon{Dir: dir, Config: filepath.Join(dir, "ipvirt.yaml"), Socket: filepath.Join(dir, "ipvirt.sock")}
	if withHTTP {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		d.HTTP = fmt.Sprintf("127.0.0.1:%d", port)
	}
	if err := d.WriteConfig(body); err != nil {
		return nil, err
	}
	return d, nil
}

// WriteConfig rewrites ipvirt.yaml (then Signal(SIGHUP) to reload).
func (d *Daemon) WriteConfig(body string) error {
	full := fmt.Sprintf("%s\nstate_dir: %s\nsocket: %s\nhttp: %q\n",
		strings.TrimRight(body, "\n"), filepath.Join(d.Dir, "state"), d.Socket, d.HTTP)
	return os.WriteFile(d.Config, []byte(full), 0o644)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start runs ipvirtd and waits until its socket answers STATUS, or it exits.
func (d *Daemon) Start(ctx context.Context) error {
	bin := d.Bin
	if bin == "" {
		var err error
		if bin, err = Binary("ipvirtd"); err != nil {
			return err
		}
	}
	d.mu.Lock()
	if d.cmd != nil && d.done != nil {
		select {
		case <-d.done:
		default:
			d.mu.Unlock()
			return errors.New("daemonproc: already running")
		}
	}
	if d.logs == nil {
		d.logs = &LockedBuffer{}
	}
	argv := append([]string{bin, "--config", d.Config, "--log-level", "debug"}, d.Extra...)
	if os.Geteuid() == 0 {
		// As deploy/ipvirtd.service does (Nice=-10): the daemon is on the
		// path of every session's first connect, and a logon storm fills
		// the run queue with the sessions' own processes.
		argv = append([]string{"nice", "-n", "-10"}, argv...)
	}
	if d.Wrap != nil {
		argv = d.Wrap(argv)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = d.logs
	cmd.Stderr = d.logs
	// The daemon is a service: it must not share the caller's login session
	// (its own queries would then be some session's), so give it its own.
	// Pdeathsig: a simulator or test killed with SIGKILL takes its daemon
	// along instead of leaving it running in a namespace nobody removes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		d.mu.Unlock()
		return fmt.Errorf("daemonproc: start %s: %w", bin, err)
	}
	done := make(chan struct{})
	d.cmd, d.done = cmd, done
	d.mu.Unlock()
	go func() {
		err := cmd.Wait()
		d.mu.Lock()
		d.err = err
		d.mu.Unlock()
		close(done)
	}()
	return d.waitReady(ctx, done)
}

func (d *Daemon) waitReady(ctx context.Context, done chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := client.Dial(d.Socket, time.Second)
		if err == nil {
			_, err = c.Status()
			c.Close()
			if err == nil {
				return nil
			}
		}
		select {
		case <-done:
			return fmt.Errorf("daemonproc: ipvirtd exited during start-up: %v\n%s", d.exitErr(), d.Logs())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemonproc: ipvirtd not ready after 30s\n%s", d.Logs())
		}
	}
}

func (d *Daemon) exitErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// Signal sends sig to the daemon.
func (d *Daemon) Signal(sig syscall.Signal) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil || d.cmd.Process == nil {
		return errors.New("daemonproc: not started")
	}
	return d.cmd.Process.Signal(sig)
}

// Stop sends sig and waits for the daemon to exit (at most 30 s, then
// SIGKILL). It returns the exit error.
func (d *Daemon) Stop(sig syscall.Signal) error {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.mu.Unlock()
	if cmd == nil {
		return nil
	}
	cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
	}
	return d.exitErr()
}

// PID is the running daemon's process id (nice and a Wrap exec it, so it
// is the daemon's own), 0 when it is not running.
func (d *Daemon) PID() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Client dials the daemon.
func (d *Daemon) Client() (*client.Client, error) { return client.Dial(d.Socket, 5*time.Second) }

// Logs returns everything the daemon wrote so far.
func (d *Daemon) Logs() string {
	d.mu.Lock()
	l := d.logs
	d.mu.Unlock()
	if l == nil {
		return ""
	}
	return l.String()
}

// Metric scrapes /metrics and returns the sum of the samples of name whose
// labels contain every given "key=\"value\"" pair.
func (d *Daemon) Metric(name string, labels ...string) (float64, error) {
	if d.HTTP == "" {
		return 0, errors.New("daemonproc: http disabled")
	}
	body, err := httpGetVia(d.DialHTTP, "http://"+d.HTTP+"/metrics")
	if err != nil {
		return 0, err
	}
	return SumMetric(body, name, labels...)
}

// LockedBuffer collects a child process's output; it may be read while the
// child still writes.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var _ io.Writer = (*LockedBuffer)(nil)
