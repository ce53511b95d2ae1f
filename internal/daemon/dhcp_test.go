package daemon_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/dhcpserver"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// TestDHCPSource runs the real ipvirtd with source: dhcp against a synthetic
// DHCP server, in relay mode over loopback (no root needed): sessions get
// leases with their own client ids, leases renew without changing address,
// a SIGKILLed daemon comes back renewing rather than starting over, and an
// ended session's lease is released on the wire.
func TestDHCPSource(t *testing.T) {
	srv, e := relayEnv(t, dhcpserver.Config{LeaseTime: 4 * time.Second}, "127.79.0", `
  retransmit_base: 200ms
  renew_retry_min: 200ms
  lease_wait: 5s`)

	a, b := e.session(60001), e.session(60002)
	vipA, vipB := e.mustVIP(a), e.mustVIP(b)
	if vipA == vipB || !netip.MustParsePrefix("127.79.0.0/24").Contains(netip.MustParseAddr(vipA)) {
		t.Fatalf("VIPs %s and %s: want two distinct addresses from the DHCP range", vipA, vipB)
	}
	if got := len(srv.Leases()); got != 2 {
		t.Fatalf("server holds %d leases, want 2", got)
	}
	for _, l := range srv.Leases() {
		if l.VendorClass != "ipvirt" || len(l.Client) < 10 || l.Client[:3] != "id:" {
			t.Fatalf("server lease %+v: want vendor class ipvirt and a client id", l)
		}
	}

	// Renewals at T1 (2s) keep the addresses.
	waitServer(t, srv, "two renewals", func(c dhcpserver.Counters) bool { return c.Renewals >= 2 })
	if v := e.mustVIP(a); v != vipA {
		t.Fatalf("session A's VIP changed across renewals: %s -> %s", vipA, v)
	}
	if v, _ := e.d.Metric("ipvirt_dhcp_extended_total", `phase="renew"`); v < 1 {
		t.Fatalf("ipvirt_dhcp_extended_total{phase=renew} = %v", v)
	}

	// SIGKILL and restart: the same addresses, renewed, no new DISCOVER.
	discovers := srv.Counters().Discovers
	e.restart(syscall.SIGKILL)
	if v := e.mustVIP(a); v != vipA {
		t.Fatalf("after SIGKILL session A got %s, had %s", v, vipA)
	}
	renewals := srv.Counters().Renewals
	waitServer(t, srv, "a renewal after the restart", func(c dhcpserver.Counters) bool { return c.Renewals > renewals })
	if d := srv.Counters().Discovers; d != discovers {
		t.Fatalf("the restarted daemon sent %d DISCOVERs: it should renew its persisted leases", d-discovers)
	}

	// Session B ends: after the grace period its lease is released.
	b.Close()
	waitServer(t, srv, "B's RELEASE", func(c dhcpserver.Counters) bool { return c.Releases >= 1 })
	for _, l := range srv.Leases() {
		if l.Addr.String() == vipB {
			t.Fatalf("released %s still leased on the server", vipB)
		}
	}
}

// relayEnv starts a synthetic DHCP server on loopback handing out
// NET.10-NET.250 (cfg's other knobs as given) and ipvirtd asking it in relay
// mode, with no pre-allocation and no ARP probe (loopback has no ARP), plus
// the dhcp keys in extra.
func relayEnv(t *testing.T, cfg dhcpserver.Config, net24, extra string) (*dhcpserver.Server, *env) {
	t.Helper()
	cfg.Listen, cfg.PrefixLen = "127.0.0.1:0", 24
	cfg.RangeStart, cfg.RangeEnd = netip.MustParseAddr(net24+".10"), netip.MustParseAddr(net24+".250")
	srv, err := dhcpserver.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	port := srv.Addr().Port()
	return srv, newEnvBody(t, fmt.Sprintf(`adapter: lo
preallocate: false
dhcp:
  server: 127.0.0.1:%d
  server_port: %d
  relay_address: %s.1
  arp_probe: false%s
`, port, port, net24, extra))
}

func waitServer(t *testing.T, srv *dhcpserver.Server, what string, cond func(dhcpserver.Counters) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Wait(ctx, func(c dhcpserver.Counters, _ []dhcpserver.Lease) bool { return cond(c) }); err != nil {
		t.Fatalf("waiting for %s: %v (server counters %+v)", what, err, srv.Counters())
	}
}

// TestPreloadWaitsForSlowDHCP: a program whose first connect needs a lease
// from a slow DHCP server (600 ms per answer, three of them before the ACK
// is in) still leaves from its VIP under libipvirt.so's default 200 ms
// timeout, because the daemon says PENDING and the library then waits for
// the answer. Without PENDING it would fail open to the machine IP.
func TestPreloadWaitsForSlowDHCP(t *testing.T) {
	_, e := relayEnv(t, dhcpserver.Config{LeaseTime: time.Hour, Latency: 600 * time.Millisecond}, "127.79.1", `
  retransmit_base: 2s
  lease_wait: 10s`)
	lib, client := cBinary(t, "libipvirt.so"), cBinary(t, "ipvirt-dbclient")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		seen <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Close()
	}()

	s := e.session(60011)
	out := filepath.Join(t.TempDir(), "result")
	lnPort := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	start := time.Now()
	pid, err := s.RunEnv([]string{"LD_PRELOAD=" + lib, "IPVIRT_SOCKET=" + e.d.Socket}, client, "--out", out, "127.0.0.1", lnPort)
	if err != nil {
		t.Fatal(err)
	}
	s.Reap(pid)
	var from string
	select {
	case from = <-seen:
	case <-time.After(20 * time.Second):
		t.Fatal("the client never connected")
	}
	result, _ := os.ReadFile(out)
	vip := e.mustVIP(s)
	if from != vip {
		t.Fatalf("server saw %s, want the session's VIP %s (client said %q after %v)", from, vip, result, time.Since(start))
	}
	if took := time.Since(start); took < time.Second {
		t.Fatalf("connected after %v: the slow server should have made it wait over a second", took)
	}
}

// TestLeaseWaitIsHonoured: dhcp.lease_wait bounds how long a program waits
// for its lease. The manager used to cut every acquisition at its own 10 s
// default, so lease_wait: 30s waited 10 s. With a server that never answers
// and lease_wait: 12s, a program's first connect waits the full 12 s
// (PENDING keeps the library waiting), then falls back to the machine IP.
func TestLeaseWaitIsHonoured(t *testing.T) {
	_, e := relayEnv(t, dhcpserver.Config{LeaseTime: time.Hour, DropRate: 1}, "127.79.3", `
  retransmit_base: 1s
  lease_wait: 12s`)
	lib, client := cBinary(t, "libipvirt.so"), cBinary(t, "ipvirt-dbclient")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	connected := make(chan time.Time, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		connected <- time.Now()
		c.Close()
	}()
	s := e.session(60021)
	out := filepath.Join(t.TempDir(), "result")
	start := time.Now()
	pid, err := s.RunEnv([]string{"LD_PRELOAD=" + lib, "IPVIRT_SOCKET=" + e.d.Socket}, client,
		"--out", out, "127.0.0.1", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reap(pid)
	select {
	case at := <-connected:
		if waited := at.Sub(start); waited < 11500*time.Millisecond {
			t.Fatalf("the program waited %v for its lease, want lease_wait's 12s", waited.Round(10*time.Millisecond))
		}
	case <-time.After(40 * time.Second):
		t.Fatal("the client never connected")
	}
}

// The pre-grant check with a DHCP source: the server hands out an address
// that a socket on this host is bound to (a holder whose lease record was
// lost keeps using it); the daemon DECLINEs it, as for an ARP conflict,
// and the session gets another.
func TestDHCPDeclinesAddressInUse(t *testing.T) {
	srv, e := relayEnv(t, dhcpserver.Config{LeaseTime: time.Hour}, "127.79.2", `
  retransmit_base: 200ms
  lease_wait: 5s`)
	first := netip.MustParseAddr("127.79.2.10") // the server's first offer
	u, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(first, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	vip := e.mustVIP(e.session(4601))
	if vip == first.String() {
		t.Fatalf("the session got %s, which a socket on this host is bound to", vip)
	}
	if c := srv.Counters(); c.Declines < 1 {
		t.Fatalf("server counters %+v: want a DECLINE", c)
	}
	if d := srv.Declined(); len(d) != 1 || d[0] != first {
		t.Fatalf("the server withholds %v, want %s", d, first)
	}
}

// serverInNetns starts a synthetic DHCP server inside the network namespace
// ns, on its loopback (brought up), handing out 10.50.0.100-199/24.
func serverInNetns(t *testing.T, ns string, cfg dhcpserver.Config) *dhcpserver.Server {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { netns.Set(orig); orig.Close() }()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatal(err)
	}
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen, cfg.PrefixLen = "127.0.0.1:0", 24
	cfg.RangeStart, cfg.RangeEnd = netip.MustParseAddr("10.50.0.100"), netip.MustParseAddr("10.50.0.199")
	srv, err := dhcpserver.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// The failure with a DHCP source: the lease file emptied while the
// daemon was down. The holders' VIPs are labelled on the adapter and their
// sockets bound to them; the restarted daemon claims each back from the
// server under the holder's own client id (INIT-REBOOT) instead of
// removing them from the adapter, and the server confirms.
func TestDHCPEmptiedStoreClaimsLiveHolders(t *testing.T) {
	testenv.RequireRoot(t)
	ns := uplinkHost(t, "10.50.0.2/24")
	srv := serverInNetns(t, ns, dhcpserver.Config{LeaseTime: time.Hour})
	port := srv.Addr().Port()
	e, session := nsEnv(t, ns, fmt.Sprintf(`adapter: eth0
source: dhcp
preallocate: false
dhcp:
  server: 127.0.0.1:%d
  server_port: %d
  relay_address: 10.50.0.2
  arp_probe: false
  retransmit_base: 200ms
  lease_wait: 5s
`, port, port))
	a, b := session(4801), session(4802)
	vipA, vipB := e.mustVIP(a), e.mustVIP(b)
	holdSockets(t, a, vipA)
	holdSockets(t, b, vipB)
	e.d.Stop(syscall.SIGKILL)
	wipeStore(t, e)
	requests := srv.Counters().Requests
	e.start()
	for s, vip := range map[*loginsession.Session]string{a: vipA, b: vipB} {
		if got := e.sessionVIP(s.ID); got != vip {
			t.Fatalf("session %d holds %q after the restart, had %s", s.ID, got, vip)
		}
		if !strings.Contains(labelled(t, ns), " "+vip+"/24") {
			t.Fatalf("%s was removed from eth0:\n%s", vip, labelled(t, ns))
		}
	}
	waitServer(t, srv, "the claims' INIT-REBOOTs", func(c dhcpserver.Counters) bool { return c.Requests >= requests+2 })
	eventually(t, "the server's ACKs renew both claims", func() bool { return strings.Count(e.d.Logs(), "dhcp: lease extended") >= 2 })
	if strings.Contains(e.d.Logs(), "vip withdrawn") {
		t.Fatalf("a claim was lost:\n%s", e.d.Logs())
	}
	if got := strings.Count(e.d.Logs(), "lease adopted from the kernel's evidence"); got != 2 {
		t.Fatalf("%d leases adopted, want 2:\n%s", got, e.d.Logs())
	}
	if nv := e.mustVIP(session(4803)); nv == vipA || nv == vipB {
		t.Fatalf("a new session got %s", nv)
	}
	if v := e.mustVIP(a); v != vipA {
		t.Fatalf("session A got %s, had %s", v, vipA)
	}
}
