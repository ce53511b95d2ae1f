package daemon_test

// First-use assignment from the kernel's stock with the other sources and
// under session_trust: pam: a DHCP lease handed to a session keeps the
// client identifier the stock obtained it with, and renews under it; an
// etcd record is renamed to the session in the farm's view; only a
// registered session takes from the stock.

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/backend/api"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/dhcpserver"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// acceptLogs starts one accept log per session-to-be, so that each
// session's connection can be told apart at the server.
func acceptLogs(t *testing.T, n int) []*acceptLog {
	t.Helper()
	out := make([]*acceptLog, n)
	for i := range out {
		out[i] = newAcceptLog(t)
	}
	return out
}

// sources returns the one address each log accepted a connection from,
// failing unless each saw exactly one connection.
func sources(t *testing.T, logs []*acceptLog) []string {
	t.Helper()
	out := make([]string, len(logs))
	for i, l := range logs {
		from, n := l.snapshot()
		if n != 1 || len(from) != 1 {
			t.Fatalf("session %d: the server accepted %d connections (%v), want 1", i, n, from)
		}
		for a := range from {
			out[i] = a
		}
	}
	return out
}

// distinctVIPs fails unless vips are pairwise distinct and none is the
// machine IP (the tests' servers listen on 127.0.0.1).
func distinctVIPs(t *testing.T, vips []string) {
	t.Helper()
	seen := map[string]int{}
	for i, v := range vips {
		if v == "127.0.0.1" {
			t.Fatalf("session %d's first connect left from the machine IP (all: %v)", i, vips)
		}
		if j, dup := seen[v]; dup {
			t.Fatalf("sessions %d and %d both connected from %s (all: %v)", j, i, v, vips)
		}
		seen[v] = i
	}
}

// auditHolder is the holder the kernel assigns for a session.
func auditHolder(s *loginsession.Session) string {
	return lease.Holder{Session: lease.Session{Kind: lease.KindAudit, ID: s.ID}}.Key()
}

// TestFirstConnectDHCP: source: dhcp (relay mode, against the synthetic
// server) with a stock of 8 and no pre-allocation; 8 sessions log on at
// once and connect as their very first act. Each connects from a VIP of its
// own, one of the stock's; the daemon makes it the session's lease, held
// under the client id the stock obtained it with, which is what the server
// has for it, before and after a renewal (and after a SIGKILLed daemon has
// come back and renewed again from its persisted state); the stock is
// refilled.
func TestFirstConnectDHCP(t *testing.T) {
	testenv.RequireRoot(t)
	const n = 8
	const leaseTime = 4 * time.Second
	srv, e := relayEnv(t, dhcpserver.Config{LeaseTime: leaseTime}, "127.79.5", `
  retransmit_base: 200ms
  renew_retry_min: 200ms
  lease_wait: 5s
interceptor: bpf
kernel_stock: 8
admins: {users: [], groups: []}`)
	eventually(t, "a full stock", func() bool { return stockFull(e, n) })
	// The server's view of the stock: only stock leases exist yet.
	stockID := map[string]string{} // VIP -> the server's client key for it
	for _, l := range srv.Leases() {
		stockID[l.Addr.String()] = l.Client
	}
	if len(stockID) != n {
		t.Fatalf("the server holds %d leases with a full stock of %d: %v", len(stockID), n, srv.Leases())
	}

	logs := acceptLogs(t, n)
	cget := buildCget(t, "cget")[0]
	sess := storm(t, e, n, 64500, func(i int) []string { return []string{cget, "127.0.0.1", logs[i].port} })
	vips := sources(t, logs)
	distinctVIPs(t, vips)
	for i, v := range vips {
		if stockID[v] == "" {
			t.Fatalf("session %d connected from %s, which is not one of the stock's leases %v", i, v, stockID)
		}
	}

	// Each assignment becomes its session's lease, under the stock's
	// client id.
	eventually(t, "every assignment recorded as its session's lease", func() bool {
		for i, s := range sess {
			if r, ok := e.sessionRow(s.ID); !ok || r.VIP != vips[i] {
				return false
			}
		}
		return true
	})
	checkClientIDs := func(when string) {
		t.Helper()
		server := map[string]string{}
		for _, l := range srv.Leases() {
			server[l.Addr.String()] = l.Client
		}
		for i, s := range sess {
			r, _ := e.sessionRow(s.ID)
			if r.VIP != vips[i] {
				t.Fatalf("%s: session %d holds %q, connected from %s", when, s.ID, r.VIP, vips[i])
			}
			if "id:"+r.ClientID != stockID[vips[i]] || server[vips[i]] != stockID[vips[i]] {
				t.Fatalf("%s: session %d's %s: daemon's client id %q, server's %q, the stock obtained it as %q",
					when, s.ID, vips[i], r.ClientID, server[vips[i]], stockID[vips[i]])
			}
		}
	}
	checkClientIDs("after the assignments")

	// Renewals: the server extends each lease under the same client id,
	// and the daemon's sessions see the extension (the renewals reach the
	// session's lease, not the stock place it came from).
	renewed := func(when string) {
		t.Helper()
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := srv.Wait(ctx, func(_ dhcpserver.Counters, ls []dhcpserver.Lease) bool {
			at := map[string]dhcpserver.Lease{}
			for _, l := range ls {
				at[l.Addr.String()] = l
			}
			for _, v := range vips {
				if l, ok := at[v]; !ok || l.Client != stockID[v] || !l.Expiry.After(t0.Add(leaseTime)) {
					return false
				}
			}
			return true
		})
		if err != nil {
			t.Fatalf("%s: the server never renewed every session's lease under its client id: %v\n%+v", when, err, srv.Leases())
		}
		eventually(t, when+": the renewals reach the sessions' leases", func() bool {
			for _, s := range sess {
				if r, _ := e.sessionRow(s.ID); !r.Expiry.After(t0.Add(leaseTime)) {
					return false
				}
			}
			return true
		})
		checkClientIDs(when)
	}
	renewed("after a renewal")

	// The stock is refilled behind them, with leases of its own.
	eventually(t, "the stock refilled", func() bool { return stockFull(e, n) && len(srv.Leases()) == 2*n })

	// A SIGKILLed daemon resumes the assigned leases from leases.db under
	// the stock's client ids.
	e.restart(syscall.SIGKILL)
	renewed("after a restart")
	eventually(t, "a full stock after the restart", func() bool { return stockFull(e, n) && len(srv.Leases()) == 2*n })
	if strings.Contains(e.d.Logs(), "vip withdrawn") {
		t.Fatalf("a lease was lost:\n%s", e.d.Logs())
	}
	if v, err := e.d.Metric("ipvirt_duplicate_vips"); err != nil || v != 0 {
		t.Fatalf("ipvirt_duplicate_vips = %v (%v)", v, err)
	}
}

// farmLeases runs `ipvirtctl -o json sessions --farm`.
func (e *env) farmLeases() ([]api.FarmLease, error) {
	out, err := e.ctlCmd("-o", "json", "sessions", "--farm").Output()
	if err != nil {
		return nil, fmt.Errorf("ipvirtctl sessions --farm: %w (%s)", err, out)
	}
	var list []api.FarmLease
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("ipvirtctl sessions --farm said %q: %w", out, err)
	}
	return list, nil
}

// TestFirstConnectEtcd: source: etcd against a real etcd with a stock of 4
// and no pre-allocation; 4 sessions log on at once and connect first
// thing, each from a stock VIP of its own; the farm (etcd itself, through
// `ipvirtctl sessions --farm`) then lists each VIP under its session and
// user, not under the stock place, and the stock is refilled.
func TestFirstConnectEtcd(t *testing.T) {
	testenv.RequireRoot(t)
	const n = 4
	endpoint := testenv.StartEtcd(t)
	e := newEnvBody(t, "adapter: lo\nsource: etcd\n"+
		"static_pool: {start: 127.70.2.10, end: 127.70.2.40, subnet_mask: 255.255.255.0}\n"+
		fmt.Sprintf("etcd: {endpoints: [%s], dial_timeout: 500ms}\n", endpoint)+
		"interceptor: bpf\nkernel_stock: 4\npreallocate: false\nadmins: {users: [], groups: []}\n")
	eventually(t, "a full stock", func() bool { return stockFull(e, n) })
	farm, err := e.farmLeases()
	if err != nil {
		t.Fatal(err)
	}
	stock := map[string]string{} // VIP -> stock holder
	for _, f := range farm {
		if !f.Mine || !strings.HasPrefix(f.Holder, "s:") {
			t.Fatalf("farm entry %+v with only a stock of this host in the farm", f)
		}
		stock[f.VIP] = f.Holder
	}
	if len(stock) != n {
		t.Fatalf("the farm lists %+v, want the %d stock leases", farm, n)
	}

	logs := acceptLogs(t, n)
	cget := buildCget(t, "cget")[0]
	sess := storm(t, e, n, 64600, func(i int) []string { return []string{cget, "127.0.0.1", logs[i].port} })
	vips := sources(t, logs)
	distinctVIPs(t, vips)
	for i, v := range vips {
		if stock[v] == "" {
			t.Fatalf("session %d connected from %s, not one of the stock's %v", i, v, stock)
		}
	}

	var last []api.FarmLease
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the farm last listed %+v", last)
		}
	})
	// The record in etcd is renamed before the daemon's own record is
	// done: both are waited for.
	eventually(t, "the farm and the daemon to list each VIP under its session", func() bool {
		if last, err = e.farmLeases(); err != nil {
			return false
		}
		for i, s := range sess {
			j := slices.IndexFunc(last, func(f api.FarmLease) bool { return f.VIP == vips[i] })
			if j < 0 || last[j].Holder != auditHolder(s) || last[j].UID != s.UID || !last[j].Mine || e.sessionVIP(s.ID) != vips[i] {
				return false
			}
		}
		return true
	})
	// The stock is refilled: 4 new stock records beside the sessions'.
	eventually(t, "the stock refilled", func() bool {
		if !stockFull(e, n) {
			return false
		}
		if last, err = e.farmLeases(); err != nil || len(last) != 2*n {
			return false
		}
		fresh := 0
		for _, f := range last {
			if strings.HasPrefix(f.Holder, "s:") && stock[f.VIP] == "" {
				fresh++
			}
		}
		return fresh == n
	})
	if v, err := e.d.Metric("ipvirt_duplicate_vips"); err != nil || v != 0 {
		t.Fatalf("ipvirt_duplicate_vips = %v (%v)", v, err)
	}
}

// TestFirstConnectPAMTrust: under session_trust: pam the kernel hands a
// stock VIP only to a registered session. An unregistered session's first
// connect leaves from the machine IP and takes nothing from the stock; a
// session that registers (`ipvirtctl session open` as root inside it, as
// pam_exec does) connects first from a stock VIP, which becomes its lease.
func TestFirstConnectPAMTrust(t *testing.T) {
	testenv.RequireRoot(t)
	const n = 4
	e := newEnv(t, "interceptor: bpf\nsession_trust: pam\n"+
		"static_pool: {start: 127.72.12.1, end: 127.72.12.20, subnet_mask: 255.255.255.0}\n"+
		"kernel_stock: 4\npreallocate: false\nadmins: {users: [], groups: []}\n")
	eventually(t, "a full stock", func() bool { return stockFull(e, n) })
	cget := buildCget(t, "cget")[0]
	assigned := func() float64 {
		t.Helper()
		v, err := e.d.Metric("ipvirt_bpf_assigned_total")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	// Unregistered: the machine IP, and the stock untouched.
	logs := acceptLogs(t, 2)
	un := e.session(64700)
	pid, err := un.Run(cget, "127.0.0.1", logs[0].port)
	if err != nil {
		t.Fatal(err)
	}
	un.Reap(pid)
	if from := sources(t, logs[:1])[0]; from != "127.0.0.1" {
		t.Fatalf("an unregistered session's first connect left from %s, want the machine IP", from)
	}
	if a := assigned(); a != 0 || !stockFull(e, n) {
		t.Fatalf("an unregistered session took from the stock: %v assigned, status %q", a, e.status().Interceptor)
	}
	time.Sleep(500 * time.Millisecond) // scans, and a stock refill if there were one
	if v := e.sessionVIP(un.ID); v != "" || e.leases() != 0 || assigned() != 0 {
		t.Fatalf("the unregistered session holds %q; %d leases", v, e.leases())
	}

	// Registered: its first connect takes a VIP from the stock.
	reg := e.session(64701)
	if r, raw := e.sessionOp(reg, "open"); r.Result != "registered" || r.ID != reg.ID {
		t.Fatalf("session open: %s", raw)
	}
	pid, err = reg.Run(cget, "127.0.0.1", logs[1].port)
	if err != nil {
		t.Fatal(err)
	}
	reg.Reap(pid)
	vip := sources(t, logs[1:])[0]
	if vip == "127.0.0.1" || !strings.HasPrefix(vip, "127.72.12.") {
		t.Fatalf("the registered session's first connect left from %s, want a VIP of the pool", vip)
	}
	eventually(t, "the assignment recorded as the session's lease", func() bool { return e.sessionVIP(reg.ID) == vip })
	// It came from the stock: the kernel assigned it, and the daemon moved
	// a stock lease to the session.
	if a := assigned(); a != 1 {
		t.Fatalf("ipvirt_bpf_assigned_total = %v, want 1", a)
	}
	moved := regexp.MustCompile(`msg="vip assigned by the kernel" holder=` + regexp.QuoteMeta(auditHolder(reg)) +
		` vip=` + regexp.QuoteMeta(vip) + ` uid=64701 stock=s:\d+`)
	if !moved.MatchString(e.d.Logs()) {
		t.Fatalf("no stock lease of %s moved to session %d:\n%s", vip, reg.ID, e.d.Logs())
	}
	eventually(t, "the stock refilled", func() bool { return stockFull(e, n) })
	if v := e.sessionVIP(un.ID); v != "" {
		t.Fatalf("the unregistered session holds %s", v)
	}
}
