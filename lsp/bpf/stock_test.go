package bpf

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/ipvirt/ipvirt/internal/cgroup"
	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// openScoped attaches a fresh interceptor at a cgroup of its own: one that
// hands out VIPs must not reach other tests' sessions on this host.
func openScoped(t *testing.T) (*Interceptor, func(uid uint32) *loginsession.Session) {
	t.Helper()
	testenv.RequireRoot(t)
	g, err := cgroup.Create(fmt.Sprintf("ipvirt-bpftest-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Remove() })
	pin := fmt.Sprintf("/sys/fs/bpf/ipvirt-test-%d-%s", os.Getpid(), strings.NewReplacer("/", "-", ".", "-").Replace(t.Name()))
	ic, err := Open(Options{PinDir: pin, CgroupPath: g.Dir, MachineIP: netip.MustParseAddr("127.0.0.1"), Pool: pool})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { ic.Close(); os.RemoveAll(pin) })
	return ic, func(uid uint32) *loginsession.Session {
		s, err := loginsession.StartWrapped(context.Background(), loginsession.Audit, uid, g.Wrap)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

func stock(t *testing.T, ic *Interceptor, n int) {
	t.Helper()
	for i := range n {
		if err := ic.PushStock(netip.AddrFrom4([4]byte{127, 74, 1, byte(10 + i)})); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFirstUseRace: 16 processes of one new session connect at the same
// moment, with no entry for the session: exactly one address leaves the
// stock, and every connection leaves from it.
func TestFirstUseRace(t *testing.T) {
	ic, session := openScoped(t)
	_, cBin := buildStatic(t)
	p := newPeers(t)
	stock(t, ic, 40)
	if err := ic.SetFirstUse(FirstUse{Assign: true}); err != nil {
		t.Fatal(err)
	}
	s := session(62301)
	const n = 16
	script := fmt.Sprintf(`for i in $(seq %d); do "$0" "$1" "$2" & done; wait`, n)
	if out, code := runIn(t, s, "/bin/sh", "-c", script, cBin, p.addr.Addr().String(), fmt.Sprint(p.addr.Port())); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	p.mu.Lock()
	seen := append([]string(nil), p.seen...)
	p.mu.Unlock()
	if len(seen) != n {
		t.Fatalf("server saw %d connections, want %d", len(seen), n)
	}
	for _, a := range seen {
		if a != seen[0] || !strings.HasPrefix(a, "127.74.1.") {
			t.Fatalf("connections came from %v, want one stock VIP for the whole session", seen)
		}
	}
	left, err := ic.DrainStock()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 39 {
		t.Fatalf("%d addresses left in the stock, want 39", len(left))
	}
	for _, a := range left {
		if a.String() == seen[0] {
			t.Fatalf("the assigned %s is still in the stock", a)
		}
	}
	entries, _ := ic.Entries()
	if len(entries) != 1 || entries[0].Session != s.ID || entries[0].VIP.String() != seen[0] {
		t.Fatalf("entries %+v, want session %d → %s", entries, s.ID, seen[0])
	}
	st, _ := ic.Stats()
	if st.Assigned != 1 {
		t.Fatalf("assigned counter %d, want 1", st.Assigned)
	}
}

// TestFirstUseRules: an administrator, an unregistered session under
// TrustPAM and, per program, an unlisted executable take nothing; an empty
// stock leaves from the machine IP, or is refused with DenyExhausted.
func TestFirstUseRules(t *testing.T) {
	ic, session := openScoped(t)
	_, cBin := buildStatic(t)
	p := newPeers(t)
	get := func(s *loginsession.Session, bin string) (string, int) {
		t.Helper()
		out, code := runIn(t, s, bin, p.addr.Addr().String(), fmt.Sprint(p.addr.Port()))
		if code != 0 {
			return out, code
		}
		return p.last(), 0
	}
	stock(t, ic, 4)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(ic.SetAdmins([]uint32{62401}))
	must(ic.SetFirstUse(FirstUse{Assign: true}))
	if got, _ := get(session(62401), cBin); got != "127.0.0.1" {
		t.Errorf("administrator's session left from %s, want the machine IP", got)
	}
	must(ic.SetFirstUse(FirstUse{Assign: true, TrustPAM: true}))
	unreg, reg := session(62402), session(62403)
	must(ic.Register(reg.ID, true))
	if got, _ := get(unreg, cBin); got != "127.0.0.1" {
		t.Errorf("unregistered session left from %s, want the machine IP", got)
	}
	if got, _ := get(reg, cBin); !strings.HasPrefix(got, "127.74.1.") {
		t.Errorf("registered session left from %s, want a stock VIP", got)
	}
	exe, err := ExeIDFromPath(cBin)
	must(err)
	must(ic.SetProgramsOfInterest([]ExeID{exe}))
	must(ic.SetFirstUse(FirstUse{Assign: true, PerProgram: true}))
	perProg := session(62404)
	other := cBin + "-unlisted" // the same code, another executable
	if b, err := os.ReadFile(cBin); err != nil || os.WriteFile(other, b, 0o755) != nil {
		t.Fatal("copy cget")
	}
	if got, _ := get(perProg, other); got != "127.0.0.1" {
		t.Errorf("unlisted program left from %s, want the machine IP", got)
	}
	if got, _ := get(perProg, cBin); !strings.HasPrefix(got, "127.74.1.") {
		t.Errorf("listed program left from %s, want a stock VIP", got)
	}
	// Drain what is left: an empty stock.
	if _, err := ic.DrainStock(); err != nil {
		t.Fatal(err)
	}
	must(ic.SetFirstUse(FirstUse{Assign: true}))
	if got, _ := get(session(62405), cBin); got != "127.0.0.1" {
		t.Errorf("empty stock: left from %s, want the machine IP", got)
	}
	must(ic.SetFirstUse(FirstUse{Assign: true, DenyExhausted: true}))
	if out, code := get(session(62406), cBin); code == 0 || !strings.Contains(out, "not permitted") {
		t.Errorf("empty stock with DenyExhausted: exit %d, %q; want EPERM", code, out)
	}
	st, _ := ic.Stats()
	if st.StockEmpty < 2 {
		t.Errorf("stock-empty counter %d, want at least 2", st.StockEmpty)
	}
}
