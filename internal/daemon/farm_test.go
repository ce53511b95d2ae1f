package daemon_test

import (
	"context"
	"fmt"
	"net/netip"
	"syscall"
	"testing"

	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/source"
	"github.com/ipvirt/ipvirt/internal/source/etcd"
	"github.com/ipvirt/ipvirt/internal/testenv"
)

// source: etcd end to end: the daemon's sessions get VIPs from the range
// it shares with another host of the farm (an etcd source in this test
// process), never the other host's; `sessions --farm` lists both hosts';
// and when etcd stops answering, the daemon withdraws its VIPs before its
// lease can run out at the cluster (lease_ttl 3s, margin 1s).
func TestEtcdFarmSource(t *testing.T) {
	endpoint, stop := testenv.StartEtcdStoppable(t)
	pool := "static_pool: {start: 127.70.1.10, end: 127.70.1.12, subnet_mask: 255.255.255.0}\n"
	e := newEnvBody(t, "adapter: lo\nsource: etcd\n"+pool+
		fmt.Sprintf("etcd: {endpoints: [%s], lease_ttl: 3s, dial_timeout: 500ms}\n", endpoint))

	rng := source.Range{Start: netip.MustParseAddr("127.70.1.10"), End: netip.MustParseAddr("127.70.1.12"),
		Subnet: netip.MustParsePrefix("127.70.1.0/24")}
	other, err := etcd.New(etcd.Config{Endpoints: []string{endpoint}}, rng, []byte("other-host-id-0123456789"), t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	theirs, err := other.Acquire(context.Background(), lease.Holder{Session: lease.Session{Kind: lease.KindAudit, ID: 7}})
	if err != nil {
		t.Fatal(err)
	}

	s1, s2 := e.session(60001), e.session(60002)
	v1, v2 := e.mustVIP(s1), e.mustVIP(s2)
	if v1 == v2 || v1 == theirs.Addr.String() || v2 == theirs.Addr.String() {
		t.Fatalf("VIPs %s and %s; the other host holds %s", v1, v2, theirs.Addr)
	}
	// The range is used up across the farm: a third session falls back.
	if r, _ := e.whoami(e.session(60003)); r.Result != "mip" {
		t.Fatalf("third session got %s %s, want the machine IP (pool used up by the farm)", r.Result, r.VIP)
	}
	c := e.client()
	farm, err := c.Farm()
	if err != nil {
		t.Fatal(err)
	}
	mine := 0
	for _, f := range farm {
		if f.Mine {
			mine++
			if f.UID != 60001 && f.UID != 60002 {
				t.Errorf("farm entry %+v: want the session's uid", f)
			}
		} else if f.VIP != theirs.Addr.String() {
			t.Errorf("farm entry %+v is neither ours nor the other host's", f)
		}
	}
	if len(farm) != 3 || mine != 2 {
		t.Fatalf("farm lists %+v: want 2 VIPs of this host and the other host's", farm)
	}

	stop(syscall.SIGSTOP)
	defer stop(syscall.SIGCONT)
	// How soon (before the lease can expire) is source/etcd's test; here,
	// that the manager takes the VIPs away.
	eventually(t, "the daemon to withdraw its VIPs", func() bool {
		return e.sessionVIP(s1.ID) == "" && e.sessionVIP(s2.ID) == ""
	})
	if r, _ := e.whoami(s1); r.Result == "vip" {
		t.Fatalf("a fenced host answered a VIP: %+v", r)
	}
	if st, err := c.Status(); err != nil || st.Healthy {
		t.Fatalf("status while fenced: %+v %v", st, err)
	}
	stop(syscall.SIGCONT)
	eventually(t, "the VIPs to come back", func() bool {
		return e.sessionVIP(s1.ID) == v1 && e.sessionVIP(s2.ID) == v2
	})
}
