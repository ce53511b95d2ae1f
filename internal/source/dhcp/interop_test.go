package dhcp

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/testenv"
)

// Interop with the DHCP servers people run, from Debian's packages:
// kea-dhcp4-server, dnsmasq, isc-dhcp-server. Each runs as a child process
// in its own namespace on the lab LAN; the client broadcasts from another.
// Each runs with its own conflict check as shipped (dnsmasq's and dhcpd's
// ping); testInterop only shortens the lease timers so renewals happen
// inside the test.

// realServer knows how to run one server and read its lease database.
type realServer struct {
	name   string
	binary string
	start  func(t *testing.T, h *host, dir string) // starts the process
	// shipped starts it as Debian ships it plus only a range (and the
	// paths a test needs): its default lease time, ping check and all.
	shipped func(t *testing.T, h *host, dir string)
	// leased reports whether the server's lease database shows addr
	// bound to client id cid (hex, lower case) right now.
	leased func(t *testing.T, dir string, addr netip.Addr, cid string) bool
}

const (
	interopPool   = "10.99.0.100 - 10.99.0.200"
	interopT1     = 3 // seconds: renewals happen inside the test
	interopLease  = 120
	interopRebind = 100
)

var realServers = []realServer{
	{
		name: "dnsmasq", binary: "dnsmasq",
		start: func(t *testing.T, h *host, dir string) {
			cmd := h.command(t, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
				"--interface=eth0", "--bind-interfaces", "--user=root", "--group=root",
				"--dhcp-range=10.99.0.100,10.99.0.200,255.255.252.0,"+fmt.Sprint(interopLease),
				fmt.Sprintf("--dhcp-option=58,%d", interopT1), fmt.Sprintf("--dhcp-option=59,%d", interopRebind),
				"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"),
				"--log-dhcp", "--log-facility="+filepath.Join(dir, "log"))
			startProcess(t, withLog(t, cmd, dir))
		},
		shipped: func(t *testing.T, h *host, dir string) {
			// /etc/dnsmasq.conf as shipped sets nothing; --port=0 only
			// keeps its DNS server off the lab's port 53.
			cmd := h.command(t, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
				"--interface=eth0", "--user=root", "--group=root",
				"--dhcp-range=10.99.0.100,10.99.0.200",
				"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"),
				"--log-dhcp", "--log-facility="+filepath.Join(dir, "log"))
			startProcess(t, withLog(t, cmd, dir))
		},
		// "<expiry> <mac> <ip> <hostname> <client id aa:bb:..>", released
		// leases are removed.
		leased: func(t *testing.T, dir string, addr netip.Addr, cid string) bool {
			data, _ := os.ReadFile(filepath.Join(dir, "leases"))
			for _, line := range strings.Split(string(data), "\n") {
				f := strings.Fields(line)
				if len(f) >= 5 && f[2] == addr.String() && strings.ReplaceAll(f[4], ":", "") == cid {
					return true
				}
			}
			return false
		},
	},
	{
		name: "kea", binary: "kea-dhcp4",
		start: func(t *testing.T, h *host, dir string) {
			conf := fmt.Sprintf(`{"Dhcp4": {
  "interfaces-config": {"interfaces": ["eth0"], "dhcp-socket-type": "raw"},
  "lease-database": {"type": "memfile", "persist": true, "name": %q, "lfc-interval": 0},
  "valid-lifetime": %d, "renew-timer": %d, "rebind-timer": %d,
  "subnet4": [{"id": 1, "subnet": "10.99.0.0/22", "pools": [{"pool": %q}]}],
  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}], "severity": "INFO"}]
}}`, filepath.Join(dir, "leases.csv"), interopLease, interopT1, interopRebind, interopPool)
			path := filepath.Join(dir, "kea.json")
			if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := h.command(t, "kea-dhcp4", "-c", path)
			cmd.Env = append(os.Environ(), "KEA_PIDFILE_DIR="+dir, "KEA_LOCKFILE_DIR="+dir)
			startProcess(t, withLog(t, cmd, dir))
		},
		shipped: func(t *testing.T, h *host, dir string) {
			conf := fmt.Sprintf(`{"Dhcp4": {
  "interfaces-config": {"interfaces": ["eth0"]},
  "lease-database": {"type": "memfile", "name": %q},
  "subnet4": [{"id": 1, "subnet": "10.99.0.0/22", "pools": [{"pool": %q}]}],
  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}], "severity": "INFO"}]
}}`, filepath.Join(dir, "leases.csv"), interopPool)
			path := filepath.Join(dir, "kea.json")
			if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := h.command(t, "kea-dhcp4", "-c", path)
			cmd.Env = append(os.Environ(), "KEA_PIDFILE_DIR="+dir, "KEA_LOCKFILE_DIR="+dir)
			startProcess(t, withLog(t, cmd, dir))
		},
		// memfile CSV, appended: address,hwaddr,client_id,valid_lifetime,
		// expire,...; the last row of an address wins, a release deletes
		// it (valid_lifetime 0) or marks state 2/expired.
		leased: func(t *testing.T, dir string, addr netip.Addr, cid string) bool {
			data, _ := os.ReadFile(filepath.Join(dir, "leases.csv"))
			bound := false
			for _, line := range strings.Split(string(data), "\n") {
				f := strings.Split(line, ",")
				if len(f) < 10 || f[0] != addr.String() {
					continue
				}
				bound = strings.ReplaceAll(f[2], ":", "") == cid && f[3] != "0" && f[9] == "0"
			}
			return bound
		},
	},
	{
		name: "isc-dhcpd", binary: "dhcpd",
		start: func(t *testing.T, h *host, dir string) {
			conf := fmt.Sprintf(`default-lease-time %d;
max-lease-time %d;
option dhcp-renewal-time %d;
option dhcp-rebinding-time %d;
subnet 10.99.0.0 netmask 255.255.252.0 { range %s; }
`, interopLease, interopLease, interopT1, interopRebind, strings.ReplaceAll(interopPool, " - ", " "))
			cf, lf := filepath.Join(dir, "dhcpd.conf"), filepath.Join(dir, "dhcpd.leases")
			if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(lf, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := h.command(t, "dhcpd", "-4", "-f", "-d", "-cf", cf, "-lf", lf, "-pf", filepath.Join(dir, "pid"), "eth0")
			startProcess(t, withLog(t, cmd, dir))
		},
		shipped: func(t *testing.T, h *host, dir string) {
			// Debian's dhcpd.conf sets lease times, DNS options and
			// ddns-update-style none; none of them changes allocation.
			conf := fmt.Sprintf("subnet 10.99.0.0 netmask 255.255.252.0 { range %s; }\n",
				strings.ReplaceAll(interopPool, " - ", " "))
			cf, lf := filepath.Join(dir, "dhcpd.conf"), filepath.Join(dir, "dhcpd.leases")
			if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(lf, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := h.command(t, "dhcpd", "-4", "-f", "-d", "-cf", cf, "-lf", lf, "-pf", filepath.Join(dir, "pid"), "eth0")
			startProcess(t, withLog(t, cmd, dir))
		},
		// dhcpd.leases, appended: "lease A { ... binding state active;
		// uid "..."; }"; the last block of an address wins.
		leased: func(t *testing.T, dir string, addr netip.Addr, cid string) bool {
			data, _ := os.ReadFile(filepath.Join(dir, "dhcpd.leases"))
			bound := false
			for _, block := range strings.Split(string(data), "lease ")[1:] {
				if !strings.HasPrefix(block, addr.String()+" {") {
					continue
				}
				bound = strings.Contains(block, "binding state active;") && strings.Contains(block, dhcpdUID(cid))
			}
			return bound
		},
	},
}

// dhcpdUID renders a client id the way dhcpd writes uid: a quoted string
// with non-printables as three-digit octal escapes.
func dhcpdUID(cidHex string) string {
	b, _ := hex.DecodeString(cidHex)
	var sb strings.Builder
	sb.WriteString(`uid "`)
	for _, c := range b {
		if c >= 0x20 && c < 0x7f && c != '"' && c != '\\' {
			sb.WriteByte(c)
		} else {
			fmt.Fprintf(&sb, `\%03o`, c)
		}
	}
	sb.WriteString(`"`)
	return sb.String()
}

func withLog(t *testing.T, cmd *exec.Cmd, dir string) *exec.Cmd {
	f, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		if t.Failed() {
			for _, name := range []string{"stdout", "log"} {
				if out, err := os.ReadFile(filepath.Join(dir, name)); err == nil && len(out) > 0 {
					t.Logf("%s %s:\n%s", cmd.Args[4], name, tail(string(out), 60))
				}
			}
		}
	})
	cmd.Stdout, cmd.Stderr = f, f
	return cmd
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// eventually polls cond: a lease file has no change notification.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestInterop(t *testing.T) {
	for _, rs := range realServers {
		t.Run(rs.name, func(t *testing.T) {
			t.Parallel()
			requireServer(t, rs)
			testInterop(t, rs)
		})
	}
}

// requireServer skips (fails under CI=true) without root or rs's binary.
func requireServer(t *testing.T, rs realServer) {
	t.Helper()
	testenv.RequireRoot(t)
	if _, err := exec.LookPath(rs.binary); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed (CI=true: not skipping)", rs.binary)
		}
		t.Skipf("%s not installed", rs.binary)
	}
}

func testInterop(t *testing.T, rs realServer) {
	lab := newLab(t)
	srvHost, cli := lab.host("10.99.0.1/22"), lab.host("10.99.0.2/22")
	dir := t.TempDir()
	rs.start(t, srvHost, dir)

	cfg := lanConfig()
	cfg.LeaseWait = 20 * time.Second // the first DISCOVERs may precede the server's start
	// dnsmasq answers nothing while it pings an address it is about to
	// offer (3 s): the default wait for an answer rides that out, where a
	// test's 200 ms one gives up on renewals the server does ACK, and the
	// next attempt comes only halfway to T2.
	cfg.RetransmitBase = DefaultRetransmitBase
	ev := newRecorder()
	cli.manage(t, ev)
	s1 := lanSource(t, cli, cfg, "interop-host", ev)
	first := acquireManaged(t, s1, cli, holder(0))

	// A small storm: one MAC, distinct client ids, concurrent DORAs.
	const n = 5
	leases := []lease.Lease{first}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		wg.Go(func() {
			l := acquireManaged(t, s1, cli, holder(i))
			mu.Lock()
			leases = append(leases, l)
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	pool := netip.MustParsePrefix("10.99.0.0/22")
	seen := map[netip.Addr]bool{}
	for _, l := range leases {
		if seen[l.Addr] || !pool.Contains(l.Addr) || l.Subnet != pool {
			t.Fatalf("lease %s subnet %s: duplicate or outside %s", l.Addr, l.Subnet, pool)
		}
		seen[l.Addr] = true
		cid := hex.EncodeToString(s1.ClientID(l.Holder))
		eventually(t, 5*time.Second, fmt.Sprintf("%s in %s's lease database", l.Addr, rs.name), func() bool {
			return rs.leased(t, dir, l.Addr, cid)
		})
	}

	// RENEWING at T1: unicast to the server, answered to the VIP.
	ev.wait(t, 15*time.Second, "a renewal of every lease", func(r []lease.Lease, _ []lostEvent) bool {
		for i := range n {
			if ev.renewedOfLocked(r, holder(i)) < 1 {
				return false
			}
		}
		return true
	})
	if c := s1.Counters(); c.Renewals < n || c.Lost != 0 {
		t.Fatalf("counters %+v", c)
	}

	// Daemon restart: a new source adopts holder 1's lease and renews it
	// without a DISCOVER; holder 0 acquires afresh and gets its address
	// back by client id.
	byHolder := map[lease.Holder]lease.Lease{}
	for _, l := range leases {
		byHolder[l.Holder] = l
	}
	s1.Close()
	ev2 := newRecorder()
	cli.manage(t, ev2)
	s2 := lanSource(t, cli, cfg, "interop-host", ev2)
	if err := s2.Adopt(byHolder[holder(1)]); err != nil {
		t.Fatal(err)
	}
	ev2.wait(t, 15*time.Second, "renewal of the adopted lease", func(r []lease.Lease, _ []lostEvent) bool {
		return len(r) >= 1
	})
	if again := acquire(t, s2, holder(0)); again.Addr != byHolder[holder(0)].Addr {
		t.Errorf("after restart holder 0 got %s, had %s", again.Addr, byHolder[holder(0)].Addr)
	}
	if c := s2.Counters(); c.Offers != 1 || c.Renewals < 1 {
		t.Fatalf("counters %+v: want one DORA (holder 0) and a renewal (adopted holder 1)", c)
	}

	// RELEASE: the server frees both.
	for _, h := range []lease.Holder{holder(0), holder(1)} {
		l := byHolder[h]
		s2.Release(l)
		cid := hex.EncodeToString(s2.ClientID(h))
		eventually(t, 5*time.Second, fmt.Sprintf("%s released in %s's lease database", l.Addr, rs.name), func() bool {
			return !rs.leased(t, dir, l.Addr, cid)
		})
	}
}
