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
	if err == nil || !strings.Contains(err.Error(), `unknown kind "mesh" (known: loopback, netns)`) {
		t.Fatalf("unknown kind: %v", err)
	}
}
