package daemon

import (
	"reflect"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/adapter"
	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/source/static"
)

// TestRestartOnlyKeepsRunningValues reloads a file that changes every
// restart-only key: each is reported as changed, and keeping the running
// values gives back the running configuration.
func TestRestartOnlyKeepsRunningValues(t *testing.T) {
	running := config.Default()
	running.Adapter, running.Source = "eth0", static.Name
	file := running
	file.Socket = "/run/other.sock"
	file.HTTP = "127.0.0.1:9999"
	file.StateDir = "/var/lib/other"
	file.SessionIdentity = identity.POSIX
	file.SessionTrust = identity.TrustPAM
	file.Source = "dhcp"
	file.Adapter = "eth1"
	file.ScanInterval = config.Duration(time.Minute)
	file.Interceptor = config.InterceptorBPF
	file.Scope = "/user.slice"
	on := true
	file.Enforce = &on
	runningAdapter, fileAdapter := adapter.Adapter{Name: "eth0"}, adapter.Adapter{Name: "eth1"}

	for _, k := range restartOnly {
		if k.value(running, runningAdapter) == k.value(file, fileAdapter) {
			t.Errorf("%s: change not seen", k.name)
		}
	}
	for _, k := range restartOnly {
		k.keep(&file, running)
	}
	if !reflect.DeepEqual(file, running) {
		t.Fatalf("after keeping the running values:\n got  %+v\n want %+v", file, running)
	}
}
