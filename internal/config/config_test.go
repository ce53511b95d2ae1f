package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/alloc"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/internal/pool"
	"github.com/ipvirt/ipvirt/internal/source/dhcp"
	"github.com/ipvirt/ipvirt/internal/source/etcd"
	"github.com/ipvirt/ipvirt/internal/source/static"
)

func TestLoadTestdata(t *testing.T) {
	yes, no, stock := true, false, 32
	full, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Enabled: true, Mode: policy.PerProgram, Adapter: "52:54:00:12:34:56", Source: static.Name,
		StaticPool: static.Config{Start: netip.MustParseAddr("10.20.0.100"),
			End: netip.MustParseAddr("10.20.0.199"), SubnetMask: netip.MustParseAddr("255.255.255.0")},
		DHCP: dhcp.Config{Server: "10.20.0.1:67", RelayAddress: "10.20.0.5", VendorClass: "ts-vip", Hostname: "ts01",
			LeaseWait: 30 * time.Second, MaxInflight: 16, RetransmitBase: 2 * time.Second, RenewRetryMin: 30 * time.Second,
			ARPProbe: &no, ARPProbeWait: 500 * time.Millisecond, ClientPort: 68, ServerPort: 67},
		Etcd: etcd.Config{Endpoints: []string{"https://10.20.0.11:2379", "https://10.20.0.12:2379", "https://10.20.0.13:2379"},
			Prefix: "/ts-farm/", LeaseTTL: 15 * time.Second, DialTimeout: 3 * time.Second, CA: "/etc/ipvirt/etcd-ca.pem",
			Cert: "/etc/ipvirt/etcd-client.pem", Key: "/etc/ipvirt/etcd-client-key.pem", Username: "ts01",
			PasswordFile: "/etc/ipvirt/etcd-password"},
		Programs:        []string{"/usr/bin/psql", "/opt/erp/bin/client"},
		Admins:          alloc.Admins{Users: []string{"root", "backup"}, Groups: []string{"sudo", "wheel"}},
		OnExhausted:     alloc.ExhaustedDeny,
		Grace:           Duration(10 * time.Second),
		StateDir:        "/var/lib/ipvirt",
		Socket:          "/run/ipvirt/ipvirt.sock",
		HTTP:            "127.0.0.1:9477",
		SessionIdentity: identity.Audit,
		SessionTrust:    identity.TrustPAM,
		ScanInterval:    Duration(500 * time.Millisecond),
		Scope:           "/user.slice",
		Preallocate:     &yes,
		Interceptor:     InterceptorBoth,
		Enforce:         &no,
		KernelStock:     &stock,
	}
	if !reflect.DeepEqual(full, want) {
		t.Errorf("full.yaml:\n got %+v\nwant %+v", full, want)
	}

	min, err := Load("testdata/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if min.Source != static.Name || min.PreallocateOn() || min.Mode != policy.PerSession || min.OnExhausted != alloc.ExhaustedMachineIP || min.Grace.Std() != DefaultGrace ||
		min.Socket != DefaultSocket || min.SessionIdentity != identity.Audit || min.SessionTrust != identity.TrustLoginUID || !min.Enabled {
		t.Errorf("minimal.yaml did not get the defaults: %+v", min)
	}
	if got := min.StaticPool.Size(); got != 241 {
		t.Errorf("pool size %d, want 241", got)
	}
}

// TestParseErrors checks that each mistake is refused with a message naming
// the bad value, so an administrator can fix it without reading code.
func TestParseErrors(t *testing.T) {
	const pool = "source: static\nstatic_pool: {start: 10.0.0.10, end: 10.0.0.20, subnet_mask: 255.255.255.0}\n"
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"unknown key", "adapter: eth0\n" + pool + "enable: true\n", "field enable not found"},
		{"typo nested", "adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0.1, ending: 10.0.0.2}\n", "field ending not found"},
		{"bad mode", "adapter: eth0\n" + pool + "mode: per-user\n", `mode: "per-user"`},
		{"bad on_exhausted", "adapter: eth0\n" + pool + "on_exhausted: fail\n", `on_exhausted: "fail"`},
		{"bad identity", "adapter: eth0\n" + pool + "session_identity: logind\n", `session_identity: "logind"`},
		{"bad session_trust", "adapter: eth0\n" + pool + "session_trust: sshd\n", `session_trust: "sshd" is not loginuid or pam`},
		{"pam with posix sessions", "adapter: eth0\n" + pool + "session_trust: pam\nsession_identity: posix\n", "session_trust: pam needs session_identity: audit"},
		{"bad source", "adapter: eth0\nsource: ldap\n", `source: "ldap"`},
		{"bad interceptor", "adapter: eth0\n" + pool + "interceptor: ebpf\n", `interceptor: "ebpf" is not preload, bpf or both`},
		{"bpf with posix sessions", "adapter: eth0\n" + pool + "interceptor: bpf\nsession_identity: posix\n", "interceptor: bpf needs session_identity: audit"},
		{"enforce without bpf", "adapter: eth0\n" + pool + "enforce: true\n", "enforce: true needs interceptor: bpf or both"},
		{"no adapter", pool, "adapter: missing"},
		{"bare number grace", "adapter: eth0\n" + pool + "grace: 5\n", `"5" is not a duration`},
		{"negative grace", "adapter: eth0\n" + pool + "grace: -1s\n", "grace: -1s is negative"},
		{"tiny scan", "adapter: eth0\n" + pool + "scan_interval: 1ms\n", "scan_interval: 1ms"},
		{"relative socket", "adapter: eth0\n" + pool + "socket: ipvirt.sock\n", `socket: "ipvirt.sock"`},
		{"relative state", "adapter: eth0\n" + pool + "state_dir: state\n", `state_dir: "state"`},
		{"bad http", "adapter: eth0\n" + pool + "http: localhost\n", `http: "localhost"`},
		{"relative program", "adapter: eth0\n" + pool + "programs: [psql]\n", `programs[0]: "psql" is not an absolute path`},
		{"program twice", "adapter: eth0\n" + pool + "programs: [/bin/a, /bin/../bin/a]\n", `programs[1]: "/bin/../bin/a" is listed twice`},
		{"bad address", "adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0, end: 10.0.0.20, subnet_mask: 255.255.255.0}\n", "10.0.0"},
		{"missing start", "adapter: eth0\nsource: static\nstatic_pool: {end: 10.0.0.20, subnet_mask: 255.255.255.0}\n", "static_pool.start: missing"},
		{"missing mask", "adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0.1, end: 10.0.0.20}\n", "static_pool.subnet_mask: missing"},
		{"ipv6 start", "adapter: eth0\nsource: static\nstatic_pool: {start: '2001:db8::1', end: 10.0.0.20, subnet_mask: 255.255.255.0}\n", "2001:db8::1 is not an IPv4"},
		{"holey mask", "adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0.1, end: 10.0.0.20, subnet_mask: 255.0.255.0}\n", "255.0.255.0 is not a contiguous"},
		{"mask /31", "adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0.1, end: 10.0.0.1, subnet_mask: 255.255.255.254}\n", "leaves no room"},
		{"start after end", "adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0.30, end: 10.0.0.20, subnet_mask: 255.255.255.0}\n", "start 10.0.0.30 is after end 10.0.0.20"},
		{"two subnets", "adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0.30, end: 10.0.1.20, subnet_mask: 255.255.255.0}\n", "not in one subnet under mask 255.255.255.0 (10.0.0.0/24)"},
		{"network address", "adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0.0, end: 10.0.0.20, subnet_mask: 255.255.255.0}\n", "10.0.0.0 is the network address"},
		{"broadcast", "adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0.10, end: 10.0.0.255, subnet_mask: 255.255.255.0}\n", "10.0.0.255 is the broadcast address"},
		{"two documents", "adapter: eth0\n" + pool + "---\nadapter: eth1\n", "more than one YAML document"},
		{"not a map", "- a\n- b\n", "cannot unmarshal"},
		{"pool without source static", "adapter: eth0\nstatic_pool: {start: 10.0.0.10, end: 10.0.0.20, subnet_mask: 255.255.255.0}\n", "write source: static to use the pool"},
		{"bad dhcp key", "adapter: eth0\ndhcp: {lease_wiat: 5s}\n", "field lease_wiat not found"},
		{"bad dhcp server", "adapter: eth0\ndhcp: {server: nowhere}\n", `server "nowhere"`},
		// Accepted here, the pool was refused only when the daemon built it.
		{"pool too large", "adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0.1, end: 10.1.0.1, subnet_mask: 255.0.0.0}\n",
			"static_pool: start 10.0.0.1 to end 10.1.0.1 holds 65537 addresses, more than the 65536"},
		// 16 times this overflowed the retransmission backoff.
		{"huge retransmit_base", "adapter: eth0\ndhcp: {retransmit_base: 2562047h}\n", "retransmit_base 2562047h0m0s: want 1ms..1m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse accepted:\n%s", tt.yaml)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestSeveralErrorsReportedAtOnce(t *testing.T) {
	_, err := Parse([]byte("adapter: eth0\nsource: static\nmode: x\non_exhausted: y\nstatic_pool: {start: 10.0.0.1, end: 10.0.0.2, subnet_mask: 255.255.255.0}\n"))
	if err == nil || !strings.Contains(err.Error(), "mode:") || !strings.Contains(err.Error(), "on_exhausted:") {
		t.Fatalf("want both mistakes reported, got %v", err)
	}
}

func TestDHCPIsTheDefaultSource(t *testing.T) {
	c, err := Parse([]byte("adapter: eth0\ndhcp: {server: 10.0.0.1, lease_wait: 3s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Source != dhcp.Name || !c.PreallocateOn() || c.DHCP.Server != "10.0.0.1" || c.DHCP.LeaseWait != 3*time.Second {
		t.Fatalf("got %+v", c)
	}
	no := false
	c.Preallocate = &no
	if c.PreallocateOn() {
		t.Fatal("explicit preallocate: false ignored")
	}
}

func TestDisabledNeedsNoAdapter(t *testing.T) {
	if _, err := Parse([]byte("enabled: false\nsource: static\nstatic_pool: {start: 10.0.0.1, end: 10.0.0.2, subnet_mask: 255.255.255.0}\n")); err != nil {
		t.Fatal(err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !os.IsNotExist(errUnwrapAll(err)) {
		t.Fatalf("err %v, want not-exist", err)
	}
}

func errUnwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

// FuzzParse: the parser must never panic, and whatever it accepts must
// satisfy the invariants the rest of the daemon relies on.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"testdata/full.yaml", "testdata/minimal.yaml"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0.1, end: 10.0.0.1, subnet_mask: 255.255.255.0}\n"))
	f.Add([]byte("grace: 1h\nmode: per-program\nprograms: [/a, /b]"))
	f.Add([]byte("adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0.1, end: 10.0.255.254, subnet_mask: 255.0.0.0}\n"))
	f.Add([]byte("adapter: eth0\ndhcp: {lease_wait: 5s, retransmit_base: 500ms, renew_retry_min: 2s, arp_probe_wait: 200ms, max_inflight: 8}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		if c.Grace < 0 || c.ScanInterval.Std() < 10*time.Millisecond || c.ScanInterval.Std() > time.Minute {
			t.Fatalf("accepted grace %s scan_interval %s", c.Grace.Std(), c.ScanInterval.Std())
		}
		if (c.SessionTrust != identity.TrustLoginUID && c.SessionTrust != identity.TrustPAM) ||
			(c.SessionTrust == identity.TrustPAM && c.SessionIdentity != identity.Audit) {
			t.Fatalf("accepted session_trust %q with session_identity %q", c.SessionTrust, c.SessionIdentity)
		}
		if c.Source == dhcp.Name {
			// The durations the DHCP client multiplies (backoff: up to
			// 16 times retransmit_base) stay in range.
			d := c.DHCP.WithDefaults()
			for _, v := range []time.Duration{d.LeaseWait, d.RetransmitBase, d.RenewRetryMin, d.ARPProbeWait} {
				if v < time.Millisecond || v > 24*time.Hour {
					t.Fatalf("accepted dhcp durations %+v", d)
				}
			}
			if d.RetransmitBase*16 <= 0 {
				t.Fatalf("retransmit_base %s overflows its backoff", d.RetransmitBase)
			}
			return
		}
		p := c.StaticPool
		if c.Source != static.Name {
			return
		}
		// What Validate accepts, the daemon can build.
		if _, err := static.New(p); err != nil {
			t.Fatalf("accepted pool %+v that the source refuses: %v", p, err)
		}
		if !p.Start.Is4() || !p.End.Is4() || p.End.Less(p.Start) {
			t.Fatalf("accepted a bad pool: %+v", p)
		}
		sub := p.Subnet()
		if !sub.Contains(p.Start) || !sub.Contains(p.End) || p.Start == sub.Addr() || p.End == pool.Broadcast(sub) {
			t.Fatalf("accepted pool %+v outside its subnet %s", p, sub)
		}
		if c.Mode != policy.PerSession && c.Mode != policy.PerProgram {
			t.Fatalf("accepted mode %q", c.Mode)
		}
		if n := p.Size(); n < 1 || n > pool.MaxSize {
			t.Fatalf("pool size %d", n)
		}
	})
}

func TestInterceptorDefaults(t *testing.T) {
	const pool = "adapter: eth0\nsource: static\nstatic_pool: {start: 10.0.0.10, end: 10.0.0.20, subnet_mask: 255.255.255.0}\n"
	tests := []struct {
		body            string
		kernel, enforce bool
		prealloc        bool
	}{
		{"", false, false, false},
		{"interceptor: bpf\n", true, true, true},
		{"interceptor: both\nenforce: false\n", true, false, true},
		{"interceptor: bpf\npreallocate: false\n", true, true, false},
	}
	for _, tt := range tests {
		c, err := Parse([]byte(pool + tt.body))
		if err != nil {
			t.Fatalf("%q: %v", tt.body, err)
		}
		if c.Interceptor.Kernel() != tt.kernel || c.EnforceOn() != tt.enforce || c.PreallocateOn() != tt.prealloc {
			t.Errorf("%q: kernel %v enforce %v prealloc %v, want %v %v %v", tt.body,
				c.Interceptor.Kernel(), c.EnforceOn(), c.PreallocateOn(), tt.kernel, tt.enforce, tt.prealloc)
		}
	}
}

// TestKernelStockSize: the default follows the source and the pool's size,
// 0 without a kernel interceptor, an explicit value wins, and one out of
// range is refused by name.
func TestKernelStockSize(t *testing.T) {
	zero, big := 0, 70000
	pool := static.Config{Start: netip.MustParseAddr("10.0.0.1"), End: netip.MustParseAddr("10.0.0.100")}
	bigPool := static.Config{Start: netip.MustParseAddr("10.0.0.1"), End: netip.MustParseAddr("10.0.9.255")}
	for _, tt := range []struct {
		c    Config
		want int
	}{
		{Config{Interceptor: InterceptorPreload, Source: static.Name, StaticPool: bigPool}, 0},
		{Config{Interceptor: InterceptorBPF, Source: static.Name, StaticPool: bigPool}, 256},
		{Config{Interceptor: InterceptorBPF, Source: static.Name, StaticPool: pool}, 50},
		{Config{Interceptor: InterceptorBoth, Source: dhcp.Name}, 4},
		{Config{Interceptor: InterceptorBPF, Source: etcd.Name, StaticPool: bigPool}, 8},
		{Config{Interceptor: InterceptorBPF, Source: static.Name, StaticPool: pool, KernelStock: &zero}, 0},
	} {
		if got := tt.c.KernelStockSize(); got != tt.want {
			t.Errorf("%+v: stock %d, want %d", tt.c, got, tt.want)
		}
	}
	c := Config{KernelStock: &big}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "kernel_stock: 70000") {
		t.Errorf("kernel_stock: 70000 accepted or unnamed: %v", err)
	}
}
