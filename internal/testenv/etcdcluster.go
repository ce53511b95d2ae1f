package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdCluster is a real etcd cluster of several members on loopback, each
// with its own ports and data directory: quorum, leader election and a
// member down or frozen behave as in a farm's cluster.
type EtcdCluster struct {
	// Endpoints are the members' client URLs, in member order.
	Endpoints []string
	Members   []*EtcdMember
}

// EtcdMember is one member's process, which tests stop and start.
type EtcdMember struct {
	Name     string
	Endpoint string // client URL
	bin      string
	args     []string
	dir      string

	mu  sync.Mutex
	cmd *exec.Cmd // nil while killed
	log *os.File
}

// StartEtcdCluster runs an n-member cluster under t's temporary directory
// until the test ends and waits until it has a leader and answers on every
// member. Without the binary the test is skipped, or fails under CI=true.
func StartEtcdCluster(t *testing.T, n int) *EtcdCluster {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("etcd not installed (Debian package etcd-server; CI=true: not skipping)")
		}
		t.Skip("etcd not installed (Debian package etcd-server)")
	}
	c, err := LaunchEtcdCluster(bin, memDir(t), n)
	if c != nil {
		t.Cleanup(func() {
			c.Close()
			if t.Failed() {
				c.dumpLogs(t.Logf)
			}
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// LaunchEtcdCluster is StartEtcdCluster for programs without a testing.T
// (bench/farm): the members keep their data under dir (etcd's own fsync on
// whatever disk dir is on) until Close. On error the cluster returned, if
// any, must still be closed.
func LaunchEtcdCluster(bin, dir string, n int) (*EtcdCluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("etcd cluster of %d members", n)
	}
	type ports struct{ client, peer int }
	ps := make([]ports, n)
	var initial []string
	for i := range ps {
		var err error
		if ps[i].client, err = loopbackPort(); err != nil {
			return nil, err
		}
		if ps[i].peer, err = loopbackPort(); err != nil {
			return nil, err
		}
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ps[i].peer))
	}
	c := &EtcdCluster{}
	for i, p := range ps {
		name := fmt.Sprintf("m%d", i)
		cu, pu := fmt.Sprintf("http://127.0.0.1:%d", p.client), fmt.Sprintf("http://127.0.0.1:%d", p.peer)
		mdir := filepath.Join(dir, name)
		if err := os.MkdirAll(mdir, 0o700); err != nil {
			return c, fmt.Errorf("etcd member %s: %w", name, err)
		}
		// On a restart the data directory wins over the --initial-*
		// flags: the member rejoins with its own identity and log.
		m := &EtcdMember{Name: name, Endpoint: cu, bin: bin, dir: mdir, args: []string{
			"--name", name, "--data-dir", filepath.Join(mdir, "data"),
			"--listen-client-urls", cu, "--advertise-client-urls", cu,
			"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "ipvirt-" + filepath.Base(dir),
			"--logger", "zap", "--log-level", "warn"}}
		c.Members = append(c.Members, m)
		c.Endpoints = append(c.Endpoints, cu)
	}
	for _, m := range c.Members {
		if err := m.start(); err != nil {
			return c, err
		}
	}
	if err := c.WaitReady(30 * time.Second); err != nil {
		return c, err
	}
	return c, nil
}

// WaitReady waits until every running member answers a linearizable read,
// which needs a leader and a quorum.
func (c *EtcdCluster) WaitReady(d time.Duration) error {
	deadline := time.Now().Add(d)
	for _, m := range c.Members {
		if !m.running() {
			continue
		}
		for {
			err := answers(m.Endpoint)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("etcd member %s at %s did not answer within %s: %w", m.Name, m.Endpoint, d, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// answers reports whether endpoint serves a linearizable Get and knows a
// leader.
func answers(endpoint string) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, err := cli.Status(ctx, endpoint)
	if err != nil {
		return err
	}
	if st.Leader == 0 {
		return errors.New("no leader")
	}
	_, err = cli.Get(ctx, "health")
	return err
}

// Close kills every member.
func (c *EtcdCluster) Close() {
	for _, m := range c.Members {
		m.Kill()
	}
}

func (c *EtcdCluster) dumpLogs(logf func(string, ...any)) {
	for _, m := range c.Members {
		if b, err := os.ReadFile(filepath.Join(m.dir, "log")); err == nil && len(b) > 0 {
			if len(b) > 1<<15 {
				b = b[len(b)-1<<15:]
			}
			logf("etcd member %s log:\n%s", m.Name, b)
		}
	}
}

func (m *EtcdMember) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(filepath.Join(m.dir, "log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("etcd member %s: %w", m.Name, err)
	}
	cmd := exec.Command(m.bin, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A test or bench that dies must not leave members behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("etcd member %s: %w", m.Name, err)
	}
	m.cmd, m.log = cmd, logf
	return nil
}

func (m *EtcdMember) running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil
}

func (m *EtcdMember) signal(sig syscall.Signal) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		m.cmd.Process.Signal(sig)
	}
}

// Freeze stops the member with SIGSTOP: its sockets stay open but nothing
// answers, as a hung or partitioned member (clients time out, they are not
// refused). It returns once the kernel reports the process stopped, so
// that what a test does next happens after the freeze.
func (m *EtcdMember) Freeze() {
	m.signal(syscall.SIGSTOP)
	m.mu.Lock()
	cmd := m.cmd
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	waitStopped(cmd.Process.Pid)
}

// waitStopped waits (at most 2 s) for the kernel to report pid stopped.
func waitStopped(pid int) {
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if procState(pid) == 'T' {
			return
		}
	}
}

// procState is the state letter of /proc/pid/stat (T: stopped), 0 if
// unknown.
func procState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces: the state follows its ")".
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// Thaw resumes a frozen member (SIGCONT).
func (m *EtcdMember) Thaw() { m.signal(syscall.SIGCONT) }

// Kill ends the member with SIGKILL (connections are refused from then on)
// and waits for it.
func (m *EtcdMember) Kill() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Signal(syscall.SIGCONT)
	m.cmd.Process.Kill()
	m.cmd.Wait()
	m.log.Close()
	m.cmd, m.log = nil, nil
}

// Restart starts a killed member again on its data directory and waits
// until it answers.
func (m *EtcdMember) Restart(d time.Duration) error {
	if err := m.start(); err != nil {
		return err
	}
	deadline := time.Now().Add(d)
	for {
		err := answers(m.Endpoint)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd member %s restarted but did not answer within %s: %w", m.Name, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// memDir is a directory for the test on tmpfs (/dev/shm) where there is
// one, else the test's temporary directory. These tests are about members
// failing, not disks: on a loaded machine a disk's fsync can stall for
// seconds, the cluster commits nothing meanwhile, and hosts rightly fence
// themselves although every member is up. bench/farm keeps etcd's fsync on
// a real disk.
func memDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "ipvirt-etcd-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
	}
	return t.TempDir()
}

// loopbackPort is a free loopback TCP port (freePort without a test).
func loopbackPort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
