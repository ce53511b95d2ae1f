package daemon_test

// One test per configuration key whose effect no older test shows. Each
// starts the real ipvirtd on an ipvirt.yaml that sets the key to a value
// other than its default and observes what README.md says the key does:
// the whole path from the file through config.Parse to the component the
// key configures, where dhcp.lease_wait once got lost (parsed, never passed
// on). internal/config's TestEveryKeyHasABehaviourTest names, for every
// key, the test that shows its effect: one of these, or an older one.
//
// The tests run in parallel with each other (each has its own daemon,
// cgroup scope, pool or DHCP relay address); those that wait on a timer
// assert only bounds a busy host cannot break: "still held after 6 s" for
// grace: 1h (the default 5s would have let go), "at least 3.5 s" for
// arp_probe_wait: 4s (the default waits 1s).

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/vishvananda/netlink"

	"github.com/ipvirt/ipvirt/backend/api"
	"github.com/ipvirt/ipvirt/internal/store"
	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/dhcpserver"
	"github.com/ipvirt/ipvirt/sim/loginsession"
	"github.com/ipvirt/ipvirt/sim/topology"
)

// keyPool is a static pool of this file's own (127.71.n.10-20): the tests
// run side by side, and a daemon counts sockets bound in its pool as
// holders.
func keyPool(n int) string {
	return fmt.Sprintf("static_pool: {start: 127.71.%d.10, end: 127.71.%d.20, subnet_mask: 255.255.255.0}\n", n, n)
}

// whoamiOK is e.whoami that fails the test on an error.
func (e *env) whoamiOK(s *loginsession.Session) api.WhoamiReport {
	e.t.Helper()
	r, err := e.whoami(s)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// enabled: false answers the machine IP to everyone (default true).
func TestKeyEnabled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "enabled: false\n"+keyPool(1))
	r := e.whoamiOK(e.session(60101))
	if r.Result != "mip" || r.Rule != "disabled" {
		t.Fatalf("with enabled: false a session got %s (rule %s, %s), want mip by rule disabled", r.Result, r.Rule, r.Reason)
	}
	if v, err := e.d.Metric("ipvirt_enabled"); err != nil || v != 0 {
		t.Fatalf("ipvirt_enabled = %v (%v), want 0", v, err)
	}
	if n := e.leases(); n != 0 {
		t.Fatalf("%d leases with enabled: false", n)
	}
}

// source: static hands out static_pool's addresses, start to end, with
// subnet_mask (the default source is DHCP, and no server runs here).
func TestKeyStaticPool(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "static_pool: {start: 127.71.2.10, end: 127.71.2.11, subnet_mask: 255.255.0.0}\n")
	got := map[string]bool{}
	for i := range 2 {
		r := e.whoamiOK(e.session(uint32(60111 + i)))
		if r.Result != "vip" {
			t.Fatalf("session %d got %s (%s), want a VIP", i, r.Result, r.Reason)
		}
		if r.Mask != "255.255.0.0" || r.Prefix != 16 {
			t.Fatalf("VIP %s handed out with mask %s (/%d), want subnet_mask 255.255.0.0", r.VIP, r.Mask, r.Prefix)
		}
		got[r.VIP] = true
	}
	if !got["127.71.2.10"] || !got["127.71.2.11"] {
		t.Fatalf("VIPs %v, want start 127.71.2.10 and end 127.71.2.11", got)
	}
	// end is the last: a third session finds the pool exhausted.
	if r := e.whoamiOK(e.session(60113)); r.Result != "mip" || !strings.Contains(r.Reason, "no virtual IP available") {
		t.Fatalf("a third session got %s %s (%s), want the machine IP of an exhausted pool", r.Result, r.VIP, r.Reason)
	}
	st, err := e.client().Status()
	if err != nil || st.Source != "static" || st.PoolSize != 2 {
		t.Fatalf("status %+v (%v): want source static, a pool of 2", st.Status, err)
	}
}

// programs: a listed program gets a VIP of its own in per-program mode
// (TestPerProgramMode shows an unlisted one getting the machine IP).
func TestKeyPrograms(t *testing.T) {
	t.Parallel()
	ctl, err := daemonproc.Binary("ipvirtctl")
	if err != nil {
		t.Fatal(err)
	}
	real, err := filepath.EvalSymlinks(ctl)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "mode: per-program\nprograms: ["+real+"]\n"+keyPool(3))
	r := e.whoamiOK(e.session(60121))
	if r.Result != "vip" || !strings.HasSuffix(r.Holder, "|"+real) {
		t.Fatalf("listed program %s got %s (holder %q, %s), want a VIP held per program", real, r.Result, r.Holder, r.Reason)
	}
}

// admins: the users (by name or uid) and groups listed are never
// virtualized, and only they: root, an administrator by default, is not
// one when the list leaves it out.
func TestKeyAdmins(t *testing.T) {
	testenv.RequireRoot(t) // sessions of other users: audit sessions
	t.Parallel()
	e := newEnv(t, "admins: {users: [\"60131\"], groups: [daemon]}\n"+keyPool(4))
	tests := []struct {
		uid  uint32
		want string
		why  string
	}{
		{60131, "mip", "listed in admins.users by uid"},
		{1, "mip", "uid 1 (daemon) is in group daemon, listed in admins.groups"},
		{0, "vip", "root is not in admins.users here"},
	}
	for _, tt := range tests {
		r := e.whoamiOK(e.session(tt.uid))
		if r.Result != tt.want || tt.want == "mip" && r.Rule != "admin" {
			t.Errorf("uid %d: got %s (rule %s, %s), want %s: %s", tt.uid, r.Result, r.Rule, r.Reason, tt.want, tt.why)
		}
	}
}

// grace: a VIP outlives its ended holder for the grace period; with 1h it
// is still held well past the default 5s.
func TestKeyGrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "grace: 1h\n"+keyPool(5))
	s := e.session(60141)
	e.mustVIP(s)
	s.Close()
	eventually(t, "a scan sees the session gone", func() bool {
		r, ok := e.sessionRow(s.ID)
		return ok && r.Ending
	})
	time.Sleep(6 * time.Second) // past the default grace, 60 scans
	if n := e.leases(); n != 1 {
		t.Fatalf("%d leases 6s after the holder ended, want its lease kept for grace: 1h", n)
	}
	if r, ok := e.sessionRow(s.ID); !ok || !r.Ending || r.VIP == "" {
		t.Fatalf("ended session's row %+v (listed %v): want its VIP, ending", r, ok)
	}
}

// scan_interval: how often the daemon scans for sessions; with 1m a new
// session is not pre-allocated for seconds (the default scans every 1s).
func TestKeyScanInterval(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "scan_interval: 1m\npreallocate: true\n"+keyPool(6))
	s := e.session(60151)
	time.Sleep(4 * time.Second) // four default intervals
	if v := e.sessionVIP(s.ID); v != "" {
		t.Fatalf("session pre-allocated %s within 4s; scan_interval: 1m scans once a minute", v)
	}
	// It is a session the daemon virtualizes once it looks.
	e.mustVIP(s)
}

// session_identity: posix takes POSIX sessions (setsid) for login sessions
// instead of audit sessions.
func TestKeySessionIdentity(t *testing.T) {
	t.Parallel()
	// The sessions are the test's own user's (POSIX sessions have no
	// login uid): no administrators, so root's are virtualized too.
	e := newEnv(t, "session_identity: posix\nadmins: {users: [], groups: []}\n"+keyPool(7))
	e.kind = loginsession.POSIX
	s := e.session(0)
	r := e.whoamiOK(s)
	if want := fmt.Sprintf("p:%d", s.ID); r.Session != want || r.Result != "vip" {
		t.Fatalf("a process of POSIX session %d is in session %q and got %s (%s); want %s and a VIP", s.ID, r.Session, r.Result, r.Reason, want)
	}
}

// scope: a session outside the cgroup subtree gets the machine IP, rule
// out-of-scope (the default, the whole host, would virtualize it).
func TestKeyScope(t *testing.T) {
	testenv.RequireRoot(t) // newEnv scopes its daemon to a cgroup as root
	t.Parallel()
	e := newEnv(t, keyPool(8))
	if e.group == nil {
		t.Fatal("the daemon is not scoped")
	}
	if r := e.whoamiOK(e.session(60161)); r.Result != "vip" {
		t.Fatalf("a session inside the scope got %s (%s)", r.Result, r.Reason)
	}
	outside, err := loginsession.Start(context.Background(), e.kind, 60162) // in this test's cgroup
	if err != nil {
		t.Fatal(err)
	}
	defer outside.Close()
	if r := e.whoamiOK(outside); r.Result != "mip" || r.Rule != "out-of-scope" {
		t.Fatalf("a session outside scope %s got %s (rule %s, %s), want mip by rule out-of-scope", e.group.Path, r.Result, r.Rule, r.Reason)
	}
}

// state_dir: the lease store lives there, and it is one daemon's: a second
// daemon on the same state_dir refuses to start.
func TestKeyStateDir(t *testing.T) {
	t.Parallel()
	e := newEnv(t, keyPool(9))
	e.mustVIP(e.session(60171))
	state := filepath.Join(e.d.Dir, "state") // daemonproc's state_dir
	if fi, err := os.Stat(filepath.Join(state, store.FileName)); err != nil || fi.Size() == 0 {
		t.Fatalf("no lease store in state_dir %s: %v", state, err)
	}
	dir := t.TempDir()
	second := &daemonproc.Daemon{Dir: dir, Config: filepath.Join(dir, "ipvirt.yaml"), Socket: filepath.Join(dir, "ipvirt.sock")}
	body := daemonConfig(staticConfig(keyPool(10))) + fmt.Sprintf("state_dir: %s\nsocket: %s\nhttp: \"\"\n", state, second.Socket)
	if err := os.WriteFile(second.Config, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := second.Start(context.Background()); err == nil {
		second.Stop(9)
		t.Fatal("a second daemon started on the first one's state_dir")
	}
	if !strings.Contains(second.Logs(), "is locked by another process") {
		t.Fatalf("the second daemon did not name the locked store:\n%s", second.Logs())
	}
}

// socket: the control socket is created at that path, mode 0666 (the
// caller's identity comes from the kernel, not the file mode).
func TestKeySocket(t *testing.T) {
	t.Parallel()
	e := newEnv(t, keyPool(11))
	fi, err := os.Stat(e.d.Socket) // daemonproc's socket, not the default
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o666 {
		t.Fatalf("%s: mode %s, want a socket with mode 0666", e.d.Socket, fi.Mode())
	}
	if out, code := run(t, e.ctlCmd("status")); code != 0 {
		t.Fatalf("ipvirtctl --socket %s status: exit %d\n%s", e.d.Socket, code, out)
	}
}

// adapter: the interface VIPs live on, named by MAC address or by subnet;
// its address is the machine IP. On a host with two adapters the key picks
// eth1 over eth0.
func TestKeyAdapter(t *testing.T) {
	testenv.RequireRoot(t)
	t.Parallel()
	ctl, err := daemonproc.Binary("ipvirtctl")
	if err != nil {
		t.Fatal(err)
	}
	for _, form := range []string{"mac", "subnet"} {
		t.Run(form, func(t *testing.T) {
			t.Parallel()
			ns := twoUplinkHost(t) // eth0 10.50.0.2/24, eth1 10.60.0.2/24
			name := "10.60.0.0/24"
			if form == "mac" {
				out, err := exec.Command("ip", "-n", ns, "-o", "link", "show", "eth1").CombinedOutput()
				m := regexp.MustCompile(`link/ether ([0-9a-f:]{17})`).FindSubmatch(out)
				if err != nil || m == nil {
					t.Fatalf("eth1's MAC: %v\n%s", err, out)
				}
				name = string(m[1])
			}
			// Two adapters: per-program mode (ipvirtctl is the program).
			e, session := nsEnv(t, ns, fmt.Sprintf("adapter: %q\nsource: static\nmode: per-program\nprograms: [%s]\n"+
				"static_pool: {start: 10.60.0.100, end: 10.60.0.199, subnet_mask: 255.255.255.0}\n", name, ctl))
			r := e.whoamiOK(session(60181))
			if r.Result != "vip" || r.MachineIP != "10.60.0.2" {
				t.Fatalf("adapter %s: got %s %s (%s), machine IP %s; want a VIP and eth1's 10.60.0.2", name, r.Result, r.VIP, r.Reason, r.MachineIP)
			}
			out, err := exec.Command("ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth1", "label", "eth1:iv").CombinedOutput()
			if err != nil || !strings.Contains(string(out), " "+r.VIP+"/24") {
				t.Fatalf("VIP %s is not on eth1 (%v):\n%s", r.VIP, err, out)
			}
		})
	}
}

// sniffer is a DHCP server that never answers: it records every message
// relayed to it, as the wire carries it.
type sniffer struct {
	conn    *net.UDPConn
	mu      sync.Mutex
	got     []sniffed
	changed chan struct{}
}

type sniffed struct {
	from netip.AddrPort
	msg  *dhcpv4.DHCPv4
}

func newSniffer(t *testing.T) *sniffer {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s := &sniffer{conn: conn, changed: make(chan struct{})}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			m, err := dhcpv4.FromBytes(buf[:n])
			if err != nil {
				continue
			}
			s.mu.Lock()
			s.got = append(s.got, sniffed{from, m})
			close(s.changed)
			s.changed = make(chan struct{})
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *sniffer) addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// wait waits (20 s at most) until cond holds over the messages so far.
func (s *sniffer) wait(t *testing.T, what string, cond func([]sniffed) bool) []sniffed {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		s.mu.Lock()
		got, ch := append([]sniffed(nil), s.got...), s.changed
		s.mu.Unlock()
		if cond(got) {
			return got
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; %d messages relayed", what, len(got))
		}
	}
}

// freeUDPPort is a UDP port free on addr.
func freeUDPPort(t *testing.T, addr string) int {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(addr)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// snifferEnv starts ipvirtd with source: dhcp in relay mode towards a
// sniffer, relaying from relay, with the dhcp keys in extra (two-space
// indented), and server_port a free port (port 67 needs root). With
// prealloc a session's exchange starts when a scan sees it, without it
// when the session asks.
func snifferEnv(t *testing.T, relay string, prealloc bool, extra string) (*sniffer, *env, int) {
	t.Helper()
	sn := newSniffer(t)
	port := freeUDPPort(t, relay)
	e := newEnvBody(t, fmt.Sprintf("adapter: lo\npreallocate: %v\ndhcp:\n  server: %s\n  relay_address: %s\n  server_port: %d\n  arp_probe: false\n%s",
		prealloc, sn.addr(), relay, port, extra))
	return sn, e, port
}

func discovers(got []sniffed) []sniffed {
	var out []sniffed
	for _, g := range got {
		if g.msg.MessageType() == dhcpv4.MessageTypeDiscover {
			out = append(out, g)
		}
	}
	return out
}

// dhcp.server, relay_address and server_port (relay mode: messages go to
// server, with giaddr relay_address, from relay_address:server_port, where
// answers come back), vendor_class (option 60) and hostname (option 12).
func TestKeyDHCPRelay(t *testing.T) {
	t.Parallel()
	const relay = "127.85.1.1"
	sn, e, port := snifferEnv(t, relay, true, "  vendor_class: acme-vdi\n  hostname: vdi-host-7\n  retransmit_base: 1m\n  lease_wait: 10s\n")
	e.session(60191)
	d := discovers(sn.wait(t, "a DISCOVER at the server", func(got []sniffed) bool { return len(discovers(got)) > 0 }))[0]
	if want := netip.AddrPortFrom(netip.MustParseAddr(relay), uint16(port)); d.from != want {
		t.Errorf("DISCOVER came from %s, want relay_address:server_port %s", d.from, want)
	}
	if gi := d.msg.GatewayIPAddr.String(); gi != relay {
		t.Errorf("giaddr %s, want relay_address %s", gi, relay)
	}
	if vc := d.msg.ClassIdentifier(); vc != "acme-vdi" {
		t.Errorf("option 60 %q, want vendor_class acme-vdi", vc)
	}
	if hn := d.msg.HostName(); hn != "vdi-host-7" {
		t.Errorf("option 12 %q, want hostname vdi-host-7", hn)
	}
}

// A reload cannot change the running DHCP client (its exchanges and
// bindings hold the settings they started with): a changed dhcp key is
// named in the log as needing a restart, as README.md says of such keys,
// and the running value stays in force.
func TestReloadNamesDHCPKeysNeedingRestart(t *testing.T) {
	t.Parallel()
	sn, e, _ := snifferEnv(t, "127.85.6.1", true, "  vendor_class: before\n  retransmit_base: 1m\n  lease_wait: 10s\n")
	b, err := os.ReadFile(e.d.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.d.Config, []byte(strings.Replace(string(b), "vendor_class: before", "vendor_class: after", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	e.d.Signal(syscall.SIGHUP)
	eventually(t, "the reload", func() bool { return strings.Contains(e.d.Logs(), "configuration reloaded") })
	if !regexp.MustCompile(`change needs a restart.*key=dhcp\.vendor_class running=before file=after`).MatchString(e.d.Logs()) {
		t.Errorf("the reload did not name dhcp.vendor_class as needing a restart:\n%s", e.d.Logs())
	}
	e.session(60271)
	d := discovers(sn.wait(t, "a DISCOVER", func(got []sniffed) bool { return len(discovers(got)) > 0 }))[0]
	if vc := d.msg.ClassIdentifier(); vc != "before" {
		t.Errorf("after the reload option 60 is %q, want the running value, before", vc)
	}
}

// dhcp.max_inflight: at most that many exchanges at once. With 1, three
// sessions acquiring at the same time put one client on the wire (the
// default, 64, would put all three).
func TestKeyDHCPMaxInflight(t *testing.T) {
	t.Parallel()
	// lease_wait: the first exchange keeps its slot for the whole test.
	sn, e, _ := snifferEnv(t, "127.85.2.1", true, "  max_inflight: 1\n  retransmit_base: 1m\n  lease_wait: 1m\n")
	ss := []*loginsession.Session{e.session(60201), e.session(60202), e.session(60203)}
	eventually(t, "three sessions acquiring", func() bool {
		for _, s := range ss {
			if r, ok := e.sessionRow(s.ID); !ok || r.State != "pending" {
				return false
			}
		}
		return true
	})
	sn.wait(t, "a DISCOVER", func(got []sniffed) bool { return len(discovers(got)) > 0 })
	time.Sleep(time.Second) // the other two would be on the wire by now
	clients := map[string]bool{}
	sn.mu.Lock()
	for _, g := range discovers(sn.got) {
		clients[string(g.msg.GetOneOption(dhcpv4.OptionClientIdentifier))] = true
	}
	sn.mu.Unlock()
	if len(clients) != 1 {
		t.Fatalf("%d clients' DISCOVERs on the wire at once, want max_inflight: 1", len(clients))
	}
	if v, err := e.d.Metric("ipvirt_dhcp_inflight"); err != nil || v != 1 {
		t.Fatalf("ipvirt_dhcp_inflight = %v (%v), want 1", v, err)
	}
}

// dhcp.retransmit_base: the first retransmission delay. At 100ms one
// exchange sends several DISCOVERs within a 2s lease_wait (the default,
// 4s ±1s, retransmits none before lease_wait ends it).
func TestKeyDHCPRetransmitBase(t *testing.T) {
	t.Parallel()
	sn, e, _ := snifferEnv(t, "127.85.3.1", true, "  retransmit_base: 100ms\n  lease_wait: 2s\n")
	e.session(60211)
	sn.wait(t, "three DISCOVERs of one exchange", func(got []sniffed) bool {
		per := map[dhcpv4.TransactionID]int{}
		for _, g := range discovers(got) {
			if per[g.msg.TransactionID]++; per[g.msg.TransactionID] >= 3 {
				return true
			}
		}
		return false
	})
}

// dhcp.lease_wait: a caller waits at most that long for a lease, then gets
// the on_exhausted answer. With 2s and a server that never answers the
// answer comes within seconds; the default, 20s, would keep it waiting
// that long. (TestLeaseWaitIsHonoured shows a lease_wait above the
// manager's own 10s bound honoured through libipvirt.so.)
func TestKeyDHCPLeaseWait(t *testing.T) {
	t.Parallel()
	sn, e, _ := snifferEnv(t, "127.85.5.1", false, "  lease_wait: 2s\n  retransmit_base: 1m\n")
	s := e.session(60261)
	start := time.Now()
	r, err := e.whoami(s, "--timeout", "40s")
	took := time.Since(start)
	if err != nil || r.Result != "mip" {
		t.Fatalf("got %+v (%v) after %v, want the machine IP (on_exhausted) once lease_wait ran out", r, err, took)
	}
	if took < 1500*time.Millisecond || took > 15*time.Second {
		t.Fatalf("the answer came after %v, want about lease_wait's 2s", took.Round(time.Millisecond))
	}
	if len(discovers(sn.wait(t, "a DISCOVER", func(got []sniffed) bool { return len(got) > 0 }))) == 0 {
		t.Fatal("no DISCOVER reached the server")
	}
	if v, err := e.d.Metric("ipvirt_dhcp_timeouts_total"); err != nil || v < 1 {
		t.Fatalf("ipvirt_dhcp_timeouts_total = %v (%v), want the DHCP client's own timeout counted", v, err)
	}
}

// dhcp.renew_retry_min: the shortest wait between renew attempts. A server
// that stops answering gets a REQUEST at T1 and then at halving intervals,
// down to renew_retry_min, until T2 (RFC 2131 4.4.5): at T1 = 1s and
// T2 = 8s, six with 200ms. At the default, 60s, there would be one, at T1.
func TestKeyDHCPRenewRetryMin(t *testing.T) {
	t.Parallel()
	srv, e := relayEnv(t, dhcpserver.Config{LeaseTime: time.Minute, T1: time.Second, T2: 8 * time.Second}, "127.85.4", `
  renew_retry_min: 200ms
  retransmit_base: 200ms
  lease_wait: 5s`)
	e.mustVIP(e.session(60221))
	srv.SetOffline(true)
	// Counted from here: a renewal the server answered before it went
	// quiet started the renew phase over.
	answered, err := e.d.Metric("ipvirt_dhcp_extend_attempts_total", `phase="renew"`)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a rebind attempt (T2)", func() bool {
		v, _ := e.d.Metric("ipvirt_dhcp_extend_attempts_total", `phase="rebind"`)
		return v >= 1
	})
	renews, err := e.d.Metric("ipvirt_dhcp_extend_attempts_total", `phase="renew"`)
	if err != nil || renews-answered < 3 {
		t.Fatalf("%v unanswered renew attempts between T1 and T2 (%v), want several with renew_retry_min: 200ms", renews-answered, err)
	}
}

// lanDHCP makes a host (a network namespace with eth0, 10.50.0.2/24) on a
// LAN whose other end runs a synthetic DHCP server in broadcast mode
// (10.50.0.1, handing out 10.50.0.100-199), and returns the host's name and
// the server.
func lanDHCP(t *testing.T, cfg dhcpserver.Config) (string, *dhcpserver.Server) {
	t.Helper()
	ns, lan := uplinkLAN(t, "10.50.0.2/24")
	cfg.Interface, cfg.PrefixLen = "eth0p", 24
	cfg.RangeStart, cfg.RangeEnd = netip.MustParseAddr("10.50.0.100"), netip.MustParseAddr("10.50.0.199")
	var srv *dhcpserver.Server
	err := topology.In(lan, func() error {
		l, err := netlink.LinkByName("eth0p")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("10.50.0.1/24")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		srv, err = dhcpserver.Start(context.Background(), cfg, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return ns, srv
}

// lanDHCPEnv starts ipvirtd on the host of lanDHCP with source: dhcp in
// broadcast mode and the dhcp keys in extra (two-space indented). Only
// sessions that ask get a VIP: the daemon is not scoped to a cgroup.
func lanDHCPEnv(t *testing.T, ns, extra string) (*env, func(uid uint32) *loginsession.Session) {
	t.Helper()
	return nsEnv(t, ns, "adapter: eth0\npreallocate: false\ndhcp:\n  retransmit_base: 200ms\n  lease_wait: 15s\n"+extra)
}

// dhcp.client_port and server_port in broadcast mode: the client sends to
// server_port and listens on client_port; a server on 1067 answering to
// 1068 is heard only with those set (the defaults are 67 and 68).
func TestKeyDHCPClientPort(t *testing.T) {
	t.Parallel()
	ns, srv := lanDHCP(t, dhcpserver.Config{Listen: "0.0.0.0:1067", ClientPort: 1068})
	e, session := lanDHCPEnv(t, ns, "  client_port: 1068\n  server_port: 1067\n  arp_probe: false\n")
	vip := e.mustVIP(session(60231))
	if !netip.MustParsePrefix("10.50.0.0/24").Contains(netip.MustParseAddr(vip)) || len(srv.Leases()) != 1 {
		t.Fatalf("VIP %s, server leases %+v: want a lease from the server on port 1067", vip, srv.Leases())
	}
}

// dhcp.arp_probe: false hands out an address without the RFC 5227 probe,
// even one another host on the link answers ARP for (the default probes,
// and DECLINEs it).
func TestKeyDHCPARPProbe(t *testing.T) {
	t.Parallel()
	taken := netip.MustParseAddr("10.50.0.100") // the server's first offer
	ns, srv := lanDHCP(t, dhcpserver.Config{ARPInUse: []netip.Addr{taken}})
	e, session := lanDHCPEnv(t, ns, "  arp_probe: false\n")
	if vip := e.mustVIP(session(60241)); vip != taken.String() {
		t.Fatalf("got %s, want the first offer %s, unprobed", vip, taken)
	}
	if c := srv.Counters(); c.Declines != 0 {
		t.Fatalf("server counters %+v: want no DECLINE", c)
	}
}

// dhcp.arp_probe_wait: how long the probe listens before an address is
// used. With 4s a session's first VIP takes at least that long (the
// default, 1s, would take about one).
func TestKeyDHCPARPProbeWait(t *testing.T) {
	t.Parallel()
	ns, _ := lanDHCP(t, dhcpserver.Config{})
	e, session := lanDHCPEnv(t, ns, "  arp_probe_wait: 4s\n")
	s := session(60251)
	start := time.Now()
	// ipvirtctl's default 5s timeout would cut the wait short on a busy host.
	if r, err := e.whoami(s, "--timeout", "30s"); err != nil || r.Result != "vip" {
		t.Fatalf("got %+v (%v), want a VIP", r, err)
	}
	if took := time.Since(start); took < 3500*time.Millisecond {
		t.Fatalf("the VIP came after %v; the ARP probe alone should have taken arp_probe_wait: 4s", took.Round(time.Millisecond))
	}
}
