package topo

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestNewKinds(t *testing.T) {
	top, err := New(&yaml.Node{})
	if err != nil || top.Adapter() != "lo" {
		t.Fatalf("no topology key: %v, %v; want loopback", top, err)
	}
	var n yaml.Node
	if err := yaml.Unmarshal([]byte("{kind: mesh}"), &n); err != nil {
		t.Fatal(err)
	}
	_, err = New(n.Content[0])
	if err == nil || !strings.Contains(err.Error(), `unknown kind "mesh" (known: farm, loopback, netns)`) {
		t.Fatalf("unknown kind: %v", err)
	}
}

// A farm's spec is checked when the file loads, each error naming the
// bad value.
func TestFarmSpec(t *testing.T) {
	for spec, want := range map[string]string{
		"{kind: farm, hosts: 1}":          "hosts 1: a farm has 2 to 8",
		"{kind: farm, hosts: 9}":          "hosts 9: a farm has 2 to 8",
		"{kind: farm, etcd_members: 2}":   "etcd_members 2: want 1, 3 or 5",
		"{kind: farm, lan: 10.78.0.1/24}": `lan "10.78.0.1/24"`,
		"{kind: farm, adapters: 2}":       "adapters",
	} {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(spec), &n); err != nil {
			t.Fatal(err)
		}
		if _, err := New(n.Content[0]); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", spec, err, want)
		}
	}
	var n yaml.Node
	if err := yaml.Unmarshal([]byte("{kind: farm}"), &n); err != nil {
		t.Fatal(err)
	}
	top, err := New(n.Content[0])
	if err != nil {
		t.Fatal(err)
	}
	f := top.(Farm)
	if got := strings.Join(f.SessionHosts(), " ") + " / " + strings.Join(f.EtcdHosts(), " "); got != "session session2 session3 / etcd1 etcd2 etcd3" {
		t.Fatalf("defaults: %s", got)
	}
}
