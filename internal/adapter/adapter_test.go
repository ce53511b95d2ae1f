package adapter

import (
	"errors"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ipvirt/ipvirt/internal/source/static"
	"github.com/ipvirt/ipvirt/internal/testenv"
)

// inNetns runs the rest of the test on this OS thread inside a fresh network
// namespace, and returns a second fresh namespace ("the LAN") to move veth
// peers into. Both vanish when their handles close.
func inNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	testenv.RequireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	lan, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	host, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		netns.Set(orig)
		host.Close()
		lan.Close()
		orig.Close()
		runtime.UnlockOSThread()
	})
	lo, _ := netlink.LinkByName("lo")
	netlink.LinkSetUp(lo)
	return lan
}

func mustAddr(t *testing.T, l netlink.Link, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		t.Fatalf("add %s to %s: %v", cidr, l.Attrs().Name, err)
	}
}

// uplink makes a veth whose peer lives in lan: the host's view of a NIC.
func uplink(t *testing.T, lan netns.NsHandle, name, cidr string) netlink.Link {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	peer, _ := netlink.LinkByName(name + "p")
	if err := netlink.LinkSetNsFd(peer, int(lan)); err != nil {
		t.Fatal(err)
	}
	l, _ := netlink.LinkByName(name)
	netlink.LinkSetUp(l)
	mustAddr(t, l, cidr)
	l, _ = netlink.LinkByName(name) // refresh: NetNsID is set now
	return l
}

func TestResolveAndSingleAdapter(t *testing.T) {
	lan := inNetns(t)
	eth := uplink(t, lan, "eth0", "10.50.0.2/24")
	mac := eth.Attrs().HardwareAddr

	for _, spec := range []string{"eth0", mac.String(), strings.ToUpper(mac.String()), "10.50.0.0/24", "10.50.0.77/24"} {
		a, err := Resolve(spec)
		if err != nil {
			t.Fatalf("Resolve(%q): %v", spec, err)
		}
		if a.Name != "eth0" || a.Addr != netip.MustParsePrefix("10.50.0.2/24") || a.Loopback {
			t.Fatalf("Resolve(%q) = %+v", spec, a)
		}
	}
	for spec, want := range map[string]string{
		"eth9":              `no interface named "eth9"`,
		"02:00:00:00:00:99": "no interface has MAC address 02:00:00:00:00:99",
		"10.99.0.0/24":      "no interface has an IPv4 address in 10.99.0.0/24",
	} {
		_, err := Resolve(spec)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "eth0") {
			t.Errorf("Resolve(%q) error %v; want %q and a list naming eth0", spec, err, want)
		}
	}

	a, _ := Resolve("eth0")
	// Internal plumbing must not make this a multi-adapter host.
	local := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vloc0"}, PeerName: "vloc1"}
	if err := netlink.LinkAdd(local); err != nil {
		t.Fatal(err)
	}
	vl, _ := netlink.LinkByName("vloc0")
	netlink.LinkSetUp(vl)
	mustAddr(t, vl, "172.31.0.1/24")
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "docker0"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	netlink.LinkSetUp(br)
	mustAddr(t, br, "172.17.0.1/16")
	// This kernel has no dummy driver; ifb stands for every virtual kind.
	ifb := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: "ifbt0"}}
	if err := netlink.LinkAdd(ifb); err != nil {
		t.Fatal(err)
	}
	netlink.LinkSetUp(ifb)
	mustAddr(t, ifb, "198.51.100.1/24")
	down := uplink(t, lan, "eth2", "10.70.0.2/24")
	netlink.LinkSetDown(down)

	if err := CheckPerSession(a); err != nil {
		t.Fatalf("single uplink with plumbing around it refused: %v", err)
	}
	cands, _ := Candidates(a)
	why := map[string]string{}
	for _, c := range cands {
		why[c.Name] = c.Why
		if c.Eligible != (c.Name == "eth0") {
			t.Errorf("%s eligible=%v (%s)", c.Name, c.Eligible, c.Why)
		}
	}
	for name, want := range map[string]string{"lo": "loopback", "vloc0": "veth with a local peer",
		"docker0": "bridge with no physical port", "ifbt0": "virtual device (ifb)", "eth2": "down"} {
		if why[name] != want {
			t.Errorf("%s: %q, want %q", name, why[name], want)
		}
	}

	// A loopback adapter (the demo topology) does not count: one uplink is
	// a single-adapter host.
	lo, err := Resolve("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckPerSession(lo); err != nil {
		t.Fatalf("loopback adapter with one uplink refused: %v", err)
	}

	// A second real uplink makes per-session mode unsupported.
	uplink(t, lan, "eth1", "10.60.0.2/24")
	err = CheckPerSession(a)
	if !errors.Is(err, ErrMultiAdapter) || !strings.Contains(err.Error(), "eth0, eth1") {
		t.Fatalf("two uplinks: %v; want ErrMultiAdapter naming eth0, eth1", err)
	}
	if err := CheckPerSession(lo); !errors.Is(err, ErrMultiAdapter) {
		t.Fatalf("two uplinks with a loopback adapter: %v; want ErrMultiAdapter", err)
	}
}

func TestValidatePool(t *testing.T) {
	eth := Adapter{Name: "eth0", Addr: netip.MustParsePrefix("10.50.0.2/24")}
	lo := Adapter{Name: "lo", Loopback: true, Addr: netip.MustParsePrefix("127.0.0.1/8")}
	pool := func(s, e string) static.Config {
		return static.Config{Start: netip.MustParseAddr(s), End: netip.MustParseAddr(e), SubnetMask: netip.MustParseAddr("255.255.255.0")}
	}
	tests := []struct {
		a    Adapter
		p    static.Config
		want string
	}{
		{eth, pool("10.50.0.100", "10.50.0.199"), ""},
		{eth, pool("10.51.0.100", "10.51.0.199"), "10.51.0.100-10.51.0.199 is not inside eth0's subnet 10.50.0.0/24"},
		{eth, pool("10.50.0.1", "10.50.0.10"), "contains 10.50.0.2, the address of adapter eth0 itself"},
		{lo, pool("127.77.0.10", "127.77.0.250"), ""},
		{lo, pool("10.50.0.100", "10.50.0.199"), "not inside lo's subnet 127.0.0.0/8"},
	}
	for _, tt := range tests {
		err := ValidatePool(tt.p.Start, tt.p.End, tt.a)
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("ValidatePool(%v-%v on %s) = %v, want %q", tt.p.Start, tt.p.End, tt.a.Name, err, tt.want)
		}
	}
}

func TestInstallerReconcile(t *testing.T) {
	lan := inNetns(t)
	uplink(t, lan, "eth0", "10.50.0.2/24")
	a, err := Resolve("eth0")
	if err != nil {
		t.Fatal(err)
	}
	in := Installer{Adapter: a}
	v1, v2, v3 := netip.MustParseAddr("10.50.0.101"), netip.MustParseAddr("10.50.0.102"), netip.MustParseAddr("10.50.0.103")
	for _, v := range []netip.Addr{v1, v2} {
		if err := in.Add(v, 24, 0); err != nil {
			t.Fatal(err)
		}
	}
	// An administrator's own secondary address must never be touched.
	l, _ := netlink.LinkByName("eth0")
	mustAddr(t, l, "10.50.0.50/24")

	got, err := in.Installed()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []netip.Prefix{netip.PrefixFrom(v1, 24), netip.PrefixFrom(v2, 24)}) {
		t.Fatalf("Installed = %v", got)
	}
	// The VIPs must not change what Resolve calls the machine IP.
	if a2, _ := Resolve("eth0"); a2.MIP() != netip.MustParseAddr("10.50.0.2") {
		t.Fatalf("MIP became %s", a2.MIP())
	}
	added, removed, err := in.Reconcile([]VIP{{Addr: v2, Bits: 24}, {Addr: v3, Bits: 24}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(added, []netip.Addr{v3}) || !slices.Equal(removed, []netip.Addr{v1}) {
		t.Fatalf("Reconcile added %v removed %v", added, removed)
	}
	all, _ := netlink.AddrList(l, netlink.FAMILY_V4)
	var ips []string
	for _, x := range all {
		ips = append(ips, x.IP.String())
	}
	slices.Sort(ips)
	if want := []string{"10.50.0.102", "10.50.0.103", "10.50.0.2", "10.50.0.50"}; !slices.Equal(ips, want) {
		t.Fatalf("addresses on eth0: %v, want %v", ips, want)
	}
	if err := in.Remove(v1, 24); err != nil {
		t.Fatalf("removing an absent VIP: %v", err)
	}
	// The VIP is usable: a socket can bind it.
	ln, err := net.Listen("tcp", v2.String()+":0")
	if err != nil {
		t.Fatalf("bind installed VIP: %v", err)
	}
	ln.Close()
}

func TestLabel(t *testing.T) {
	if Label("eth0") != "eth0:iv" || Label("enp0s31f6") != "enp0s31f6:iv" || Label("wlxabcdefabcdef") != "" {
		t.Fatal("Label")
	}
}

func TestLoopbackInstallerIsNoop(t *testing.T) {
	in := Installer{Adapter: Adapter{Name: "lo", Loopback: true}}
	if in.Needed() || in.Add(netip.MustParseAddr("127.77.0.1"), 24, 0) != nil {
		t.Fatal("loopback installer did something")
	}
}

// The lifetime of an installed VIP comes from a lease's expiry, which a DHCP
// server or the lease file sets. netlink truncates it to 32 bits: 2^32+5
// seconds used to become 5, and the kernel dropped the VIP after 5 seconds.
func TestLifetimeSecs(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want int
	}{
		{time.Hour, 3600},
		{1500 * time.Millisecond, 1},
		{time.Millisecond, 1},
		{0xfffffffe * time.Second, maxLifetime},
		{0xffffffff * time.Second, maxLifetime}, // not the kernel's "forever"
		{(1<<32 + 5) * time.Second, maxLifetime},
		{1<<63 - 1, maxLifetime},
	} {
		if got := lifetimeSecs(tc.d); got != tc.want {
			t.Errorf("lifetimeSecs(%s) = %d, want %d", tc.d, got, tc.want)
		}
	}
}
