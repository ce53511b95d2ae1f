package check

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/dbserver"
	"github.com/ipvirt/ipvirt/sim/scenario/topo"
)

// Every key a phase's expect block takes is a registered check.
func TestCheckKeys(t *testing.T) {
	want := []string{"accepted", "alerts", "connect_p50_below", "connect_p99_below", "denied", "dhcp",
		"distinct_sources", "metrics", "one_host_per_address", "refused", "sources_match_report", "wire"}
	if got := Keys(); !slices.Equal(got, want) {
		t.Fatalf("registered %v, want %v", got, want)
	}
}

func parseCheck(t *testing.T, key, value string) Check {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(value), &n); err != nil {
		t.Fatal(err)
	}
	parse, ok := Lookup(key)
	if !ok {
		t.Fatalf("%s: not registered", key)
	}
	c, err := parse(n.Content[0], Site{Phase: "phases[0] (p)", Line: 1, Key: key})
	if err != nil {
		t.Fatalf("%s: %s: %v", key, value, err)
	}
	return c
}

// A block that asks for nothing parses to no check, as an absent one.
func TestCheckNothingToCheck(t *testing.T) {
	for key, value := range map[string]string{"accepted": "~", "sources_match_report": "false", "connect_p99_below": "0s"} {
		if c := parseCheck(t, key, value); c != nil {
			t.Errorf("%s: %s: got a check", key, value)
		}
	}
}

func TestCheckOutcomes(t *testing.T) {
	vip, other := netip.MustParseAddr("127.78.0.10"), netip.MustParseAddr("127.78.0.11")
	x := &ClientExpect{Source: "vip", Verdict: "accepted"}
	env := &Env{
		Topology: loopbackTopo(t),
		Clients: []*ClientResult{
			{Group: "user", Session: "user#1", Key: "a:1", Name: "db-client", Expect: x, Verdict: "accepted",
				Source: netip.AddrPortFrom(vip, 40000), VIP: vip, Connect: time.Millisecond},
			{Group: "user", Session: "user#2", Key: "a:2", Name: "db-client", Expect: x, Verdict: "refused",
				Source: netip.AddrPortFrom(vip, 40001), VIP: other, Connect: 3 * time.Millisecond, Stderr: "ipvirt: late\nmore"},
		},
		Report: []SessionRow{{Session: "a:1", VIP: vip.String()}, {Session: "a:2", VIP: vip.String()}},
		Server: []dbserver.Conn{{Source: netip.AddrPortFrom(vip, 40000), Accepted: true}, {Source: netip.AddrPortFrom(vip, 40001)}},
	}
	tests := []struct {
		key, value string
		ok         bool
		what, got  string
	}{
		{"accepted", "1", true, "accepted by the server = 1", "1"},
		{"refused", "0", false, "refused by the server = 0", "1"},
		{"denied", "0", true, "denied (connect failed with EACCES/EPERM) = 0", "0"},
		{"distinct_sources", "1", true, "distinct source addresses the server saw = 1", "1"},
		{"connect_p50_below", "2ms", true, "connect() p50 < 2ms [interceptor preload]", "1ms over 2 connects"},
		{"connect_p99_below", "2ms", false, "connect() p99 < 2ms [interceptor preload]", "3ms over 2 connects"},
		{"sources_match_report", "true", false, "sources equal the VIPs `ipvirtctl sessions` reports",
			"user#2 left from 127.78.0.10, ipvirtctl reports 127.78.0.11; VIP 127.78.0.10 reported for a:1 and a:2"},
	}
	env.Interceptor = "preload"
	for _, tt := range tests {
		end, err := parseCheck(t, tt.key, tt.value).Begin(context.Background(), env)
		if err != nil {
			t.Fatal(err)
		}
		out := end(context.Background())
		if len(out) != 1 || out[0].OK != tt.ok || out[0].What != tt.what || out[0].Got != tt.got {
			t.Errorf("%s: %s: got %+v, want ok=%v %q (got %q)", tt.key, tt.value, out, tt.ok, tt.what, tt.got)
		}
	}
	// Clients of one entry are judged together; a failure quotes stderr.
	out := Clients(env)
	if len(out) != 2 || out[0].OK || out[0].What != "user/db-client leaves from its own VIP" || out[1].OK ||
		!strings.Contains(out[1].Got, "user#2: refused [ipvirt: late]") {
		t.Fatalf("client outcomes: %+v", out)
	}
}

func loopbackTopo(t *testing.T) topo.Topology {
	top, err := topo.New(&yaml.Node{})
	if err != nil {
		t.Fatal(err)
	}
	return top
}

// one_host_per_address fails only when two hosts used one address at the
// same instant: a refused connection counts (its source was in use), an
// address that moved after its first host hung up does not.
func TestOneHostPerAddress(t *testing.T) {
	a, b := netip.MustParseAddr("10.78.0.100"), netip.MustParseAddr("10.78.0.101")
	t0 := time.Now().Add(-time.Minute)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	client := func(host string, src netip.Addr, port uint16) *ClientResult {
		return &ClientResult{Host: host, Source: netip.AddrPortFrom(src, port), Expect: &ClientExpect{}}
	}
	env := &Env{
		Topology: loopbackTopo(t),
		Clients:  []*ClientResult{client("session", a, 1), client("session2", a, 2), client("session", b, 3), client("session3", b, 4)},
		Server: []dbserver.Conn{
			// a: host 1 from 0 s to 5 s, then host 2 from 6 s: moved, fine.
			{Source: netip.AddrPortFrom(a, 1), Accepted: true, At: at(0), Closed: at(5)},
			{Source: netip.AddrPortFrom(a, 2), Accepted: true, At: at(6)},
			// b: host 1 holds it when host 3's connection is refused.
			{Source: netip.AddrPortFrom(b, 3), Accepted: true, At: at(0)},
			{Source: netip.AddrPortFrom(b, 4), At: at(2)},
		},
	}
	end, err := parseCheck(t, "one_host_per_address", "true").Begin(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	out := end(context.Background())
	if len(out) != 1 || out[0].OK || out[0].Got != "10.78.0.101 from session and session3 at once" ||
		!strings.Contains(out[0].What, "(2 addresses from 3 hosts)") {
		t.Fatalf("got %+v", out)
	}
}
