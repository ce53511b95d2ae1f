package daemon

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/lsp/bpf"
)

// TestKernelOptionsFromConfig: what the file says reaches the kernel
// interceptor's options, parsed as the daemon parses it. enforce has no
// effect the daemon could show without loading the eBPF programs; what an
// interceptor does with Options.Enforce, Pool and PinDir is lsp/bpf's tests'
// (TestEnforcement, TestEnforcementBeyondBind), and TestKernelInterceptor
// runs the whole daemon with interceptor: bpf. This test closes the gap
// between them, the plumbing, where dhcp.lease_wait once got lost.
func TestKernelOptionsFromConfig(t *testing.T) {
	const base = "adapter: lo\nsource: static\ninterceptor: bpf\n" +
		"static_pool: {start: 127.71.30.10, end: 127.71.30.20, subnet_mask: 255.255.255.0}\n"
	mip := netip.MustParseAddr("127.0.0.1")
	tests := []struct {
		name    string
		body    string
		enforce bool
		// defaultPins: the pins in config.DefaultPinDir, as with the
		// default state_dir; otherwise in a directory of their own.
		defaultPins bool
	}{
		{"defaults", "", true, true},
		{"enforce false", "enforce: false\n", false, true},
		{"enforce true", "enforce: true\n", true, true},
		{"state_dir", "state_dir: /var/lib/ipvirt-other\n", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(base + tt.body))
			if err != nil {
				t.Fatal(err)
			}
			opts, err := kernelOptions(cfg, mip, nil)
			if err != nil {
				t.Fatal(err)
			}
			if opts.Enforce != tt.enforce {
				t.Errorf("%q: Options.Enforce = %v, want %v", tt.body, opts.Enforce, tt.enforce)
			}
			if got := opts.PinDir == config.DefaultPinDir; got != tt.defaultPins || !strings.HasPrefix(opts.PinDir, config.DefaultPinDir) {
				t.Errorf("%q: PinDir %s (the default %s: want %v)", tt.body, opts.PinDir, config.DefaultPinDir, tt.defaultPins)
			}
			wantPool := []bpf.Range{{Start: netip.MustParseAddr("127.71.30.10"), End: netip.MustParseAddr("127.71.30.20")}}
			if !slices.Equal(opts.Pool, wantPool) || opts.MachineIP != mip {
				t.Errorf("%q: pool %v machine IP %s, want %v and %s", tt.body, opts.Pool, opts.MachineIP, wantPool, mip)
			}
			if opts.CgroupPath != "" {
				t.Errorf("%q: no scope, but attach point %s", tt.body, opts.CgroupPath)
			}
		})
	}
}
