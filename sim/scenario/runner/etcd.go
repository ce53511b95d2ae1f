package runner

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ipvirt/ipvirt/sim/scenario/topo"
)

// etcdMember is one member of a farm's etcd cluster (Debian's etcd-server,
// /usr/bin/etcd), alone on its topology host so that a fault step can
// freeze, kill or cut off one member.
type etcdMember struct {
	name string // etcd1: the member's name, and its host's
	addr netip.Addr
	argv []string // the command line, kept to start the member again
	log  *os.File
	cmd  *exec.Cmd
	done chan struct{}
}

func (m *etcdMember) clientURL() string { return fmt.Sprintf("http://%s:2379", m.addr) }
func (m *etcdMember) peerURL() string   { return fmt.Sprintf("http://%s:2380", m.addr) }

// startEtcd starts every member (a new cluster, data in the run's work
// directory) and waits until the cluster has a leader.
func (r *fileRun) startEtcd(ctx context.Context, f topo.Farm) error {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return errors.New("etcd not installed (Debian package etcd-server)")
	}
	var cluster []string
	for _, host := range f.EtcdHosts() {
		m := &etcdMember{name: host, addr: f.Addr(host)}
		r.etcd = append(r.etcd, m)
		cluster = append(cluster, m.name+"="+m.peerURL())
	}
	// A token of the run's own: members of another run (another LAN in
	// another namespace, same addresses) must never mistake it for theirs.
	token := filepath.Base(r.work)
	for _, m := range r.etcd {
		dir := filepath.Join(r.work, m.name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		m.argv = r.topo.Wrap(m.name, []string{bin, "--name", m.name, "--data-dir", filepath.Join(dir, "data"),
			"--listen-client-urls", m.clientURL(), "--advertise-client-urls", m.clientURL(),
			"--listen-peer-urls", m.peerURL(), "--initial-advertise-peer-urls", m.peerURL(),
			"--initial-cluster", strings.Join(cluster, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", token, "--logger", "zap", "--log-level", "warn"})
		if m.log, err = os.Create(filepath.Join(dir, "log")); err != nil {
			return err
		}
		if err := m.start(); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := r.etcdHealthy(ctx, "server", r.etcd[0])
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("etcd cluster did not come up in 30s: %w (logs in %s)", err, r.work)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// start runs the member (again: on its data, the cluster flags are then
// ignored by etcd).
func (m *etcdMember) start() error {
	cmd := exec.Command(m.argv[0], m.argv[1:]...)
	cmd.Stdout, cmd.Stderr = m.log, m.log
	// Pdeathsig: a simulator killed with SIGKILL takes its members along
	// (ip netns exec execs etcd in place, so the setting stays).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("etcd %s: %w", m.name, err)
	}
	done := make(chan struct{})
	m.cmd, m.done = cmd, done
	go func() { cmd.Wait(); close(done) }()
	return nil
}

func (m *etcdMember) running() bool {
	if m.cmd == nil {
		return false
	}
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

func (m *etcdMember) signal(sig syscall.Signal) error {
	if !m.running() {
		return fmt.Errorf("etcd %s is not running", m.name)
	}
	return m.cmd.Process.Signal(sig)
}

// kill stops the member at once and reaps it.
func (m *etcdMember) kill() {
	if !m.running() {
		return
	}
	m.cmd.Process.Signal(syscall.SIGCONT) // a frozen member dies too
	m.cmd.Process.Kill()
	<-m.done
}

func (m *etcdMember) stop() {
	m.kill()
	if m.log != nil {
		m.log.Close()
		m.log = nil
	}
}

// etcdStep does a fault step to member target (etcd1, ...).
func (r *fileRun) etcdStep(do, target string) error {
	var m *etcdMember
	for _, x := range r.etcd {
		if x.name == target {
			m = x
		}
	}
	if m == nil {
		return fmt.Errorf("target %q: the run has %d etcd members (etcd1..etcd%d)", target, len(r.etcd), len(r.etcd))
	}
	switch do {
	case "etcd-freeze":
		return m.signal(syscall.SIGSTOP)
	case "etcd-thaw":
		return m.signal(syscall.SIGCONT)
	case "etcd-kill":
		m.kill()
		return nil
	case "etcd-start":
		if m.running() {
			return fmt.Errorf("etcd %s is running", m.name)
		}
		return m.start()
	}
	return fmt.Errorf("unknown etcd step %q", do)
}
