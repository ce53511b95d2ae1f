package daemon_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/topology"
)

// Logons against dnsmasq as Debian ships it plus a range (its ping check
// on), end to end: real login sessions ask the daemon on a LAN adapter,
// with the daemon's DHCP defaults. One logon alone, then 5 and 50 at
// once: every session gets a VIP of its own (none falls back), and the
// last comes within twice the single logon's time plus 1 s. dnsmasq
// offers every exchange from one MAC the same address; without offer
// steering the sessions converged one per 3 s ping (internal/source/dhcp
// TestInteropConverge shows the same at the source, for Kea and dhcpd too).
func TestDnsmasqLogons(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("dnsmasq not installed (CI=true: not skipping)")
		}
		t.Skip("dnsmasq not installed")
	}
	t.Parallel()
	ns, lan := uplinkLAN(t, "10.52.0.2/24")
	if err := topology.In(lan, func() error {
		l, err := netlink.LinkByName("eth0p")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("10.52.0.1/24")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	}); err != nil {
		t.Fatal(err)
	}
	inLAN := func(args ...string) *exec.Cmd {
		return exec.Command("nsenter", append([]string{fmt.Sprintf("--net=/proc/%d/fd/%d", os.Getpid(), int(lan))}, args...)...)
	}
	dir := t.TempDir()
	dnsmasq := inLAN("dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=eth0p",
		"--user=root", "--group=root", "--dhcp-range=10.52.0.100,10.52.0.200",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"))
	dnsmasq.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := dnsmasq.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dnsmasq.Process.Kill(); dnsmasq.Wait() })
	eventually(t, "dnsmasq listening on UDP 67", func() bool {
		out, _ := inLAN("ss", "-Hlun", "sport = :67").Output()
		return strings.TrimSpace(string(out)) != ""
	})

	e, session := nsEnv(t, ns, "adapter: eth0\npreallocate: false\n")
	uid := uint32(61500)
	logons := func(n int) (last time.Duration, vips []string) {
		t.Helper()
		ss := make([]func() (string, error), n)
		for i := range n {
			s := session(uid)
			uid++
			ss[i] = func() (string, error) {
				r, err := e.whoami(s, "--timeout", "60s")
				if err != nil {
					return "", err
				}
				if r.Result != "vip" {
					return "", fmt.Errorf("session %d got %s (%s)", s.ID, r.Result, r.Reason)
				}
				return r.VIP, nil
			}
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := time.Now()
		for _, ask := range ss {
			wg.Go(func() {
				v, err := ask()
				took := time.Since(start)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Errorf("%d at once: %v", n, err)
					return
				}
				vips = append(vips, v)
				last = max(last, took)
			})
		}
		wg.Wait()
		return last, vips
	}
	single, first := logons(1)
	seen := map[string]bool{}
	for _, v := range first {
		seen[v] = true
	}
	for _, n := range []int{5, 50} {
		last, vips := logons(n)
		if t.Failed() {
			return
		}
		for _, v := range vips {
			if seen[v] {
				t.Fatalf("%d at once: %s handed out twice", n, v)
			}
			seen[v] = true
		}
		bound := 2*single + time.Second
		t.Logf("dnsmasq: one logon %s; %d at once: last VIP after %s (bound %s)", single.Round(time.Millisecond), n,
			last.Round(time.Millisecond), bound.Round(time.Millisecond))
		if last > bound {
			t.Fatalf("%d at once: last VIP after %s, want at most 2 × %s + 1 s", n, last, single)
		}
	}
}
