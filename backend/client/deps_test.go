package client_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLinksNothingOfTheDaemon: a program that talks to ipvirtd (ipvirtctl,
// the simulator, the benches, anyone's tool) imports client, wire and api
// and links none of the daemon: not its store, DHCP client, metrics or eBPF
// loader, and none of its packages.
func TestLinksNothingOfTheDaemon(t *testing.T) {
	forbidden := []string{
		"go.etcd.io/bbolt", "github.com/insomniacslk/dhcp", "github.com/prometheus/client_golang",
		"github.com/cilium/ebpf",
		"github.com/ipvirt/ipvirt/internal/alloc", "github.com/ipvirt/ipvirt/internal/server",
		"github.com/ipvirt/ipvirt/internal/config", "github.com/ipvirt/ipvirt/internal/store",
		"github.com/ipvirt/ipvirt/internal/daemon", "github.com/ipvirt/ipvirt/internal/source",
	}
	for _, pkg := range []string{"github.com/ipvirt/ipvirt/cmd/ipvirtctl", "github.com/ipvirt/ipvirt/backend/client"} {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range forbidden {
				if dep == f || strings.HasPrefix(dep, f+"/") {
					t.Errorf("%s links %s", pkg, dep)
				}
			}
		}
	}
}
