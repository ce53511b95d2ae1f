package daemon

import (
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/adapter"
	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/source/dhcp"
	"github.com/ipvirt/ipvirt/internal/source/etcd"
	"github.com/ipvirt/ipvirt/internal/source/static"
)

// TestRestartOnlyKeepsRunningValues reloads a file that changes every
// restart-only key: each is reported as changed, and keeping the running
// values gives back the running configuration.
func TestRestartOnlyKeepsRunningValues(t *testing.T) {
	running := config.Default()
	// The running source is DHCP, so that its section's keys count.
	running.Adapter, running.Source = "eth0", dhcp.Name
	file := running
	file.Socket = "/run/other.sock"
	file.HTTP = "127.0.0.1:9999"
	file.StateDir = "/var/lib/other"
	file.SessionIdentity = identity.POSIX
	file.SessionTrust = identity.TrustPAM
	file.Source = static.Name
	file.Adapter = "eth1"
	file.ScanInterval = config.Duration(time.Minute)
	file.Interceptor = config.InterceptorBPF
	file.Scope = "/user.slice"
	on := true
	file.Enforce = &on
	off := false
	file.DHCP = dhcp.Config{Server: "10.0.0.1", RelayAddress: "10.0.0.2", VendorClass: "other", Hostname: "other",
		LeaseWait: time.Second, MaxInflight: 1, RetransmitBase: time.Second, RenewRetryMin: time.Second,
		ARPProbe: &off, ARPProbeWait: time.Millisecond, ClientPort: 1068, ServerPort: 1067}
	runningAdapter, fileAdapter := adapter.Adapter{Name: "eth0"}, adapter.Adapter{Name: "eth1"}
	checkRestartKeys(t, running, file, runningAdapter, fileAdapter)

	// A farm host: the etcd section and the shared static_pool count.
	running.Source = etcd.Name
	running.StaticPool = static.Config{Start: netip.MustParseAddr("10.0.0.10"), End: netip.MustParseAddr("10.0.0.20"),
		SubnetMask: netip.MustParseAddr("255.255.255.0")}
	running.Etcd = etcd.Config{Endpoints: []string{"http://10.0.0.5:2379"}}
	file.DHCP = running.DHCP
	file.StaticPool = static.Config{Start: netip.MustParseAddr("10.0.0.30"), End: netip.MustParseAddr("10.0.0.40"),
		SubnetMask: netip.MustParseAddr("255.255.255.0")}
	file.Etcd = etcd.Config{Endpoints: []string{"https://10.0.0.6:2379"}, Prefix: "/other/", LeaseTTL: time.Minute,
		DialTimeout: 5 * time.Second, CA: "/ca", Cert: "/c", Key: "/k", Username: "u", PasswordFile: "/p"}
	checkRestartKeys(t, running, file, runningAdapter, fileAdapter)
}

// checkRestartKeys: every restart key that applies to running sees file's
// change, and keeping the running values gives running back.
func checkRestartKeys(t *testing.T, running, file config.Config, ra, fa adapter.Adapter) {
	t.Helper()
	for _, k := range restartOnly {
		if k.applies != nil && !k.applies(running) {
			continue
		}
		if k.value(running, ra) == k.value(file, fa) {
			t.Errorf("source %s: %s: change not seen", running.Source, k.name)
		}
	}
	for _, k := range restartOnly {
		if k.applies == nil || k.applies(running) {
			k.keep(&file, running)
		}
	}
	if !reflect.DeepEqual(file, running) {
		t.Fatalf("source %s: after keeping the running values:\n got  %+v\n want %+v", running.Source, file, running)
	}
}

// TestRestartKeysDocumented: README.md's reload paragraph names exactly the
// keys restartOnly keeps (`dhcp.*` standing for the dhcp section's), in
// its order.
func TestRestartKeysDocumented(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, para, ok := strings.Cut(strings.Join(strings.Fields(string(b)), " "), "Keys that need a restart (")
	if !ok {
		t.Fatal(`README.md has no "Keys that need a restart (" paragraph`)
	}
	para, _, _ = strings.Cut(para, ") keep their running values")
	var documented []string
	// Key names only: `source: dhcp` is a condition, not a key.
	for _, m := range regexp.MustCompile("`([a-z_.*]+)`").FindAllStringSubmatch(para, -1) {
		documented = append(documented, m[1])
	}
	var keys []string
	for _, k := range restartOnly {
		name := k.name
		if section, _, ok := strings.Cut(name, "."); ok {
			name = section + ".*"
		}
		if !slices.Contains(keys, name) {
			keys = append(keys, name)
		}
	}
	if !slices.Equal(documented, keys) {
		t.Fatalf("README.md says these need a restart:\n  %v\nrestartOnly keeps:\n  %v", documented, keys)
	}
	// With a static source the dhcp section is unused: its changes are
	// neither reported nor undone.
	running := config.Default()
	running.Source = static.Name
	for _, k := range restartOnly {
		if strings.HasPrefix(k.name, "dhcp.") && k.applies(running) {
			t.Errorf("%s counts with source: static", k.name)
		}
	}
}
