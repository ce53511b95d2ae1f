package dhcpserver

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/topology"
)

// pair is two network namespaces joined by a veth: "srv" and "cli", each
// with eth0. Kept tiny; sim/topology is the general tool.
type pair struct {
	srvName, cliName string
	cli              netns.NsHandle
}

func newPair(t *testing.T) *pair {
	testenv.RequireRoot(t)
	sweepStale()
	p := &pair{srvName: fmt.Sprintf("dsrv%d", os.Getpid()), cliName: fmt.Sprintf("dcli%d", os.Getpid())}
	srv := namedNS(t, p.srvName)
	p.cli = namedNS(t, p.cliName)
	hs, err := netlink.NewHandleAt(srv)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	hc, err := netlink.NewHandleAt(p.cli)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	if err := hs.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(p.cli))}); err != nil {
		t.Fatal(err)
	}
	for i, h := range []*netlink.Handle{hs, hc} {
		l, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		ip := net.IPv4(10, 98, 0, byte(1+i))
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// sweepStale deletes namespaces left by test processes that were killed
// before their cleanup ran.
func sweepStale() {
	ents, _ := os.ReadDir("/var/run/netns")
	for _, e := range ents {
		for _, prefix := range []string{"dsrv", "dcli"} {
			rest, ok := strings.CutPrefix(e.Name(), prefix)
			if pid, err := strconv.Atoi(rest); ok && err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) != nil {
				_ = netns.DeleteNamed(e.Name())
			}
		}
	}
}

func namedNS(t *testing.T, name string) netns.NsHandle {
	t.Helper()
	h, err := topology.NewNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Close()
		_ = netns.DeleteNamed(name)
	})
	return h
}

func readStatus(path string) (Status, bool) {
	var st Status
	b, err := os.ReadFile(path)
	return st, err == nil && json.Unmarshal(b, &st) == nil
}

func waitStatus(t *testing.T, path string, what string, cond func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, ok := readStatus(path); ok && cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s in %s", what, path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMainInNamespace runs the server as a child process inside a network
// namespace, the way the simulator does, and gets a lease from it with
// nclient4 (a client that is not ipvirt's) over the veth.
func TestMainInNamespace(t *testing.T) {
	p := newPair(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "s.yaml")
	status := filepath.Join(dir, "status.json")
	if err := os.WriteFile(cfg, []byte("interface: eth0\nrange_start: 10.98.0.100\nrange_end: 10.98.0.110\nlease_time: 30s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", p.srvName, os.Args[0])
	cmd.Env = append(os.Environ(), "DHCPSERVER_MAIN=1", "DHCPSERVER_ARGS=-config "+cfg+" -status "+status)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	waitStatus(t, status, "the server to be ready", func(Status) bool { return true })

	var lease *nclient4.Lease
	err := topology.In(p.cli, func() error {
		c, err := nclient4.New("eth0", nclient4.WithTimeout(time.Second), nclient4.WithRetry(5))
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		lease, err = c.Request(ctx, dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte("nclient4"))))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !lease.ACK.YourIPAddr.Equal(net.IPv4(10, 98, 0, 100)) || !lease.ACK.ServerIdentifier().Equal(net.IPv4(10, 98, 0, 1)) {
		t.Fatalf("ack %s", lease.ACK.Summary())
	}

	if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	st := waitStatus(t, status, "the lease in the status", func(s Status) bool { return len(s.Leases) == 1 })
	if st.ServerID != "10.98.0.1" || st.Leases[0].Addr != netip.MustParseAddr("10.98.0.100") || st.Counters.Acks != 1 {
		t.Fatalf("status %+v", st)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("server exit: %v", waitErr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop on SIGTERM")
	}
}
