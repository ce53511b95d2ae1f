package daemon_test

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ipvirt/ipvirt/internal/testenv"
)

// twoUplinkHost makes a named network namespace with two adapters whose
// peers sit in another namespace, like a host with two NICs, and returns
// its name.
func twoUplinkHost(t *testing.T) string {
	t.Helper()
	return uplinkHost(t, "10.50.0.2/24", "10.60.0.2/24")
}

var uplinkHosts atomic.Int32

// uplinkHost makes a named network namespace with one adapter per address
// (eth0, eth1, ...), each with its peer in another namespace, and returns
// its name.
func uplinkHost(t *testing.T, cidrs ...string) string {
	t.Helper()
	name, _ := uplinkLAN(t, cidrs...)
	return name
}

// uplinkLAN is uplinkHost that also returns the peers' namespace (the
// LAN: eth0p, eth1p, ..., down and without addresses), open until the test
// ends, for a test that puts hosts of its own there.
func uplinkLAN(t *testing.T, cidrs ...string) (string, netns.NsHandle) {
	t.Helper()
	testenv.RequireRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { netns.Set(orig); orig.Close() }()
	lan, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lan.Close() })
	name := fmt.Sprintf("ipvt-chk-%d-%d", os.Getpid(), uplinkHosts.Add(1))
	host, err := netns.NewNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close(); netns.DeleteNamed(name) })
	for i, cidr := range cidrs {
		ifname := fmt.Sprintf("eth%d", i)
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: ifname}, PeerName: ifname + "p"}); err != nil {
			t.Fatal(err)
		}
		peer, _ := netlink.LinkByName(ifname + "p")
		netlink.LinkSetNsFd(peer, int(lan))
		l, _ := netlink.LinkByName(ifname)
		netlink.LinkSetUp(l)
		a, _ := netlink.ParseAddr(cidr)
		if err := netlink.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
	}
	return name, lan
}

func TestCheckRefusesPerSessionOnTwoAdapters(t *testing.T) {
	ns := twoUplinkHost(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("ip (Debian package iproute2) is needed to run ipvirtd in a namespace")
	}
	check := func(mode string) (string, int) {
		return checkConfig(t, "adapter: eth0\nsource: static\nmode: "+mode+"\n"+
			"static_pool: {start: 10.50.0.100, end: 10.50.0.199, subnet_mask: 255.255.255.0}\n",
			"ip", "netns", "exec", ns)
	}
	out, code := check("per-session")
	if code != 1 || !strings.Contains(out, "has 2: eth0, eth1") || !strings.Contains(out, "use mode: per-program") {
		t.Fatalf("per-session on two adapters: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "COUNTED     eth1") || !strings.Contains(out, "not counted lo") {
		t.Fatalf("--check does not explain the adapters:\n%s", out)
	}
	if out, code := check("per-program"); code != 0 {
		t.Fatalf("per-program on two adapters refused: exit %d\n%s", code, out)
	}
}
