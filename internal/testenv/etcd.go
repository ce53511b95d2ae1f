package testenv

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// StartEtcd runs one real etcd member (Debian's etcd-server) on loopback
// ports of its own, with its data in the test's temporary directory, until
// the test ends, and returns its client URL. Without the binary the test
// is skipped, or fails under CI=true.
func StartEtcd(t *testing.T) string {
	endpoint, _ := StartEtcdStoppable(t)
	return endpoint
}

// StartEtcdStoppable is StartEtcd, with a function that signals the
// process: SIGSTOP freezes the cluster (every client's requests time out;
// it returns once the kernel reports the process stopped, so that what the
// test does next happens after the freeze), SIGCONT thaws it.
func StartEtcdStoppable(t *testing.T) (string, func(syscall.Signal)) {
	return StartEtcdWith(t, EtcdOptions{})
}

// EtcdOptions change how StartEtcdWith runs the member.
type EtcdOptions struct {
	// TLS, when set, serves clients over https with these files (PEM):
	// the member's certificate and key, and the CA client certificates
	// must be signed by (client-cert-auth).
	TLS *EtcdTLS
	// ClientTLS is how the readiness check connects to a TLS member.
	ClientTLS *tls.Config
	// Ready says whether the member answers; nil: a Get (over ClientTLS
	// when set).
	Ready func(endpoint string) error
}

// EtcdTLS are the files of a TLS member.
type EtcdTLS struct{ Cert, Key, ClientCA string }

// StartEtcdWith is StartEtcdStoppable with options.
func StartEtcdWith(t *testing.T, o EtcdOptions) (string, func(syscall.Signal)) {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("etcd not installed (Debian package etcd-server; CI=true: not skipping)")
		}
		t.Skip("etcd not installed (Debian package etcd-server)")
	}
	client, peer := freePort(t), freePort(t)
	dir := memDir(t) // tmpfs: see memDir
	scheme := "http"
	if o.TLS != nil {
		scheme = "https"
	}
	cu, pu := fmt.Sprintf("%s://127.0.0.1:%d", scheme, client), fmt.Sprintf("http://127.0.0.1:%d", peer)
	args := []string{"--name", "m0", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", cu, "--advertise-client-urls", cu,
		"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
		"--initial-cluster", "m0=" + pu, "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn"}
	if o.TLS != nil {
		args = append(args, "--cert-file", o.TLS.Cert, "--key-file", o.TLS.Key,
			"--client-cert-auth", "--trusted-ca-file", o.TLS.ClientCA)
	}
	cmd := exec.Command(bin, args...)
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(dir, "log")); err == nil && len(b) > 0 && len(b) < 1<<16 {
				t.Logf("etcd log:\n%s", b)
			}
		}
	})
	ready := o.Ready
	if ready == nil {
		ready = func(endpoint string) error {
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, TLS: o.ClientTLS, Logger: zap.NewNop()})
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err = cli.Get(ctx, "health")
			return err
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := ready(cu)
		if err == nil {
			return cu, func(sig syscall.Signal) {
				cmd.Process.Signal(sig)
				if sig == syscall.SIGSTOP {
					waitStopped(cmd.Process.Pid)
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd at %s did not answer: %v", cu, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
