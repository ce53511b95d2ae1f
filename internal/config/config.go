// Package config loads and validates ipvirt.yaml. Keys mirror the registry
// values of Windows RD IP Virtualization (EnableVirtualIP, VirtualMode,
// AdapterAddress, the TSVIPool Start/End/SubnetMask) so that an
// administrator who knows the original finds their way.
//
// Validation here is everything that can be checked from the file alone.
// Checks against the host (the adapter exists, the pool lies in its subnet,
// per-session mode on a single-adapter host) live in package adapter.
package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/backend/api"
	"github.com/ipvirt/ipvirt/internal/alloc"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/internal/pool"
	"github.com/ipvirt/ipvirt/internal/source/dhcp"
	"github.com/ipvirt/ipvirt/internal/source/etcd"
	"github.com/ipvirt/ipvirt/internal/source/static"
)

// DefaultPath is where ipvirtd looks for its config.
const DefaultPath = "/etc/ipvirt/ipvirt.yaml"

// Defaults for the keys a config may leave out.
const (
	DefaultSocket       = api.DefaultSocket
	DefaultHTTP         = "127.0.0.1:9477"
	DefaultStateDir     = "/var/lib/ipvirt"
	DefaultGrace        = 5 * time.Second
	DefaultScanInterval = time.Second
)

// Interceptor is how programs are made to use their VIP.
type Interceptor string

const (
	// InterceptorPreload: libipvirt.so (LD_PRELOAD) asks the daemon.
	InterceptorPreload Interceptor = "preload"
	// InterceptorBPF: cgroup eBPF programs read the daemon's maps in the
	// kernel, covering static and Go binaries, with enforcement.
	InterceptorBPF Interceptor = "bpf"
	// InterceptorBoth: the kernel programs, and the library for hosts that
	// also deploy it (the library binds first; the kernel leaves bound
	// sockets alone).
	InterceptorBoth Interceptor = "both"
)

// Kernel reports whether the eBPF interceptor is wanted.
func (i Interceptor) Kernel() bool { return i == InterceptorBPF || i == InterceptorBoth }

// Config is the parsed ipvirt.yaml.
type Config struct {
	Enabled bool        `yaml:"enabled"`
	Mode    policy.Mode `yaml:"mode"`
	// Adapter is an interface name (eth0), a MAC address (the AdapterAddress
	// registry value of Windows) or a subnet (10.0.0.0/24, as the Windows group policy):
	// the adapter holding an address in it.
	Adapter    string        `yaml:"adapter"`
	Source     string        `yaml:"source"`
	StaticPool static.Config `yaml:"static_pool"`
	// DHCP configures the DHCP client (source: dhcp): see dhcp.Config.
	DHCP dhcp.Config `yaml:"dhcp"`
	// Etcd is the farm's cluster (source: etcd, static_pool's range
	// shared by every host): see etcd.Config.
	Etcd            etcd.Config     `yaml:"etcd"`
	Programs        []string        `yaml:"programs"`
	Admins          alloc.Admins    `yaml:"admins"`
	OnExhausted     alloc.Exhausted `yaml:"on_exhausted"`
	Grace           Duration        `yaml:"grace"`
	StateDir        string          `yaml:"state_dir"`
	Socket          string          `yaml:"socket"`
	HTTP            string          `yaml:"http"`
	SessionIdentity identity.Kind   `yaml:"session_identity"`
	// SessionTrust says which audit sessions are logins: every one
	// (loginuid, the default) or only those PAM registered (pam).
	SessionTrust identity.Trust `yaml:"session_trust"`
	// ScanInterval is how often live sessions and programs are rescanned to
	// find holders that ended.
	ScanInterval Duration `yaml:"scan_interval"`
	// Scope limits the daemon to the processes of one cgroup2 subtree, as
	// /proc/PID/cgroup names it (/user.slice: interactive logins on a
	// systemd host): the scan, pre-allocation, the kernel interceptor's
	// attach point and enforcement. Empty: the whole host.
	Scope string `yaml:"scope"`
	// Interceptor is preload (default), bpf or both.
	Interceptor Interceptor `yaml:"interceptor"`
	// Enforce (bpf) makes the kernel refuse, with EPERM, a bind or send
	// from another holder's VIP or from a pool address the caller does not
	// hold. Unset: on with the kernel interceptor.
	Enforce *bool `yaml:"enforce"`
	// Preallocate acquires a VIP as soon as a scan sees a new session (or,
	// per program, a listed program starting) instead of at its first
	// bind/connect, so that the first connect never waits for the source.
	// Unset, it is on for DHCP (an exchange and its ARP probe take longer
	// than an intercepted connect waits) and for the kernel interceptor
	// (which never asks the daemon), off otherwise.
	Preallocate *bool `yaml:"preallocate"`
	// KernelStock (bpf) is how many VIPs the daemon keeps acquired,
	// installed and persisted ahead, for the kernel to hand to a holder at
	// its first socket call without waiting for the daemon. Unset: 256
	// for a static pool (at most half of it), 8 for etcd (the farm shares
	// the pool), 4 for DHCP; 0 turns first-use assignment off (VIPs then
	// come from pre-allocation and the scan).
	KernelStock *int `yaml:"kernel_stock"`
}

// KernelStockSize resolves KernelStock and its source-dependent default;
// 0 when the kernel interceptor is not configured.
func (c Config) KernelStockSize() int {
	if !c.Interceptor.Kernel() {
		return 0
	}
	if c.KernelStock != nil {
		return max(*c.KernelStock, 0)
	}
	if c.Source == etcd.Name {
		// The farm's pool is shared: a stock is addresses other hosts
		// cannot have.
		return 8
	}
	if c.UsesPool() {
		size := 0
		if c.StaticPool.Start.IsValid() && c.StaticPool.End.IsValid() {
			size = int(pool.V4(c.StaticPool.End)-pool.V4(c.StaticPool.Start)) + 1
		}
		return min(256, size/2)
	}
	return 4
}

// PinDir is the bpffs directory of this daemon's kernel interceptor: one
// per state_dir, so that two daemons on one host (a test beside the real
// one) never adopt each other's programs. The default state_dir keeps the
// plain name.
func (c Config) PinDir() string {
	if c.StateDir == DefaultStateDir {
		return DefaultPinDir
	}
	sum := sha256.Sum256([]byte(filepath.Clean(c.StateDir)))
	return DefaultPinDir + "-" + hex.EncodeToString(sum[:6])
}

// DefaultPinDir is the pin directory of a daemon with the default
// state_dir (lsp/bpf's default).
const DefaultPinDir = "/sys/fs/bpf/ipvirt"

// UsesPool reports whether VIPs come from static_pool's range (source
// static, or etcd sharing it across a farm).
func (c Config) UsesPool() bool { return c.Source == static.Name || c.Source == etcd.Name }

// PreallocateOn resolves Preallocate and its source-dependent default.
func (c Config) PreallocateOn() bool {
	if c.Preallocate != nil {
		return *c.Preallocate
	}
	// A VIP that needs the network (a DHCP exchange, an etcd
	// transaction) is better had before the first connect waits for it.
	return c.Source == dhcp.Name || c.Source == etcd.Name || c.Interceptor.Kernel()
}

// EnforceOn resolves Enforce and its default.
func (c Config) EnforceOn() bool {
	if c.Enforce != nil {
		return *c.Enforce && c.Interceptor.Kernel()
	}
	return c.Interceptor.Kernel()
}

// Duration is a time.Duration written as "5s", "250ms", "1m".
type Duration time.Duration

// UnmarshalYAML accepts Go duration strings only: a bare number would be
// ambiguous (seconds? nanoseconds?) and is refused.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: %q is not a duration (write it like 5s, 250ms or 1m)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration in the form UnmarshalYAML reads.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// Default returns the configuration used for keys a file leaves out.
func Default() Config {
	return Config{
		Enabled:         true,
		Mode:            policy.PerSession,
		Source:          dhcp.Name,
		Admins:          alloc.Admins{Users: []string{"root"}, Groups: []string{"sudo", "wheel"}},
		OnExhausted:     alloc.ExhaustedMachineIP,
		Grace:           Duration(DefaultGrace),
		StateDir:        DefaultStateDir,
		Socket:          DefaultSocket,
		HTTP:            DefaultHTTP,
		SessionIdentity: identity.Audit,
		SessionTrust:    identity.TrustLoginUID,
		ScanInterval:    Duration(DefaultScanInterval),
		Interceptor:     InterceptorPreload,
	}
}

// Load reads and validates the config file at path.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML over the defaults and validates the result. Unknown
// keys are errors, so that a typo never silently means "use the default".
func Parse(b []byte) (Config, error) {
	c := Default()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	// A second document would be silently ignored otherwise.
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Config{}, errors.New("more than one YAML document; ipvirt.yaml holds exactly one")
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate checks everything that does not depend on the host.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	switch c.Mode {
	case policy.PerSession, policy.PerProgram:
	default:
		bad("mode: %q is not per-session or per-program", c.Mode)
	}
	switch c.OnExhausted {
	case alloc.ExhaustedMachineIP, alloc.ExhaustedDeny:
	default:
		bad("on_exhausted: %q is not machine-ip or deny", c.OnExhausted)
	}
	switch c.Interceptor {
	case InterceptorPreload, InterceptorBPF, InterceptorBoth:
	default:
		bad("interceptor: %q is not preload, bpf or both", c.Interceptor)
	}
	if c.Interceptor.Kernel() && c.SessionIdentity == identity.POSIX {
		bad("interceptor: %s needs session_identity: audit (the kernel programs know a task's audit session, not its POSIX session)", c.Interceptor)
	}
	if c.Enforce != nil && *c.Enforce && !c.Interceptor.Kernel() {
		bad("enforce: true needs interceptor: bpf or both (only the kernel can refuse a bind)")
	}
	switch c.SessionIdentity {
	case identity.Audit, identity.POSIX:
	default:
		bad("session_identity: %q is not audit or posix", c.SessionIdentity)
	}
	switch c.SessionTrust {
	case identity.TrustLoginUID:
	case identity.TrustPAM:
		if c.SessionIdentity == identity.POSIX {
			bad("session_trust: pam needs session_identity: audit (PAM registers the audit session that pam_loginuid opened)")
		}
	default:
		bad("session_trust: %q is not loginuid or pam", c.SessionTrust)
	}
	switch c.Source {
	case static.Name:
		if err := c.StaticPool.Validate(); err != nil {
			errs = append(errs, err)
		}
	case dhcp.Name:
		if err := c.DHCP.Validate(); err != nil {
			errs = append(errs, err)
		}
		if c.StaticPool != (static.Config{}) {
			bad("static_pool: set, but source is dhcp (the default); write source: static to use the pool")
		}
	case etcd.Name:
		if err := c.StaticPool.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%w (source: etcd shares static_pool's range across the farm)", err))
		}
		if err := c.Etcd.Validate(); err != nil {
			errs = append(errs, err)
		}
	default:
		bad("source: %q is not static, dhcp or etcd", c.Source)
	}

	if c.Adapter == "" && c.Enabled {
		bad("adapter: missing; name the interface (eth0), its MAC address, or a subnet (10.0.0.0/24)")
	}
	if c.Grace < 0 {
		bad("grace: %s is negative", c.Grace.Std())
	}
	if c.KernelStock != nil && (*c.KernelStock < 0 || *c.KernelStock > 65536) {
		bad("kernel_stock: %d is outside 0..65536", *c.KernelStock)
	}
	if c.ScanInterval.Std() < 10*time.Millisecond || c.ScanInterval.Std() > time.Minute {
		bad("scan_interval: %s is outside 10ms..1m", c.ScanInterval.Std())
	}
	if c.Socket == "" || !filepath.IsAbs(c.Socket) {
		bad("socket: %q is not an absolute path", c.Socket)
	}
	if c.Scope != "" && (!strings.HasPrefix(c.Scope, "/") || filepath.Clean(c.Scope) != c.Scope) {
		bad("scope: %q is not a clean cgroup path such as /user.slice (as /proc/PID/cgroup shows it)", c.Scope)
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		bad("state_dir: %q is not an absolute path", c.StateDir)
	}
	if c.HTTP != "" {
		if _, err := netip.ParseAddrPort(c.HTTP); err != nil {
			bad("http: %q is not an address:port such as 127.0.0.1:9477 (empty disables HTTP)", c.HTTP)
		}
	}
	seen := map[string]bool{}
	for i, p := range c.Programs {
		switch {
		case !filepath.IsAbs(p):
			bad("programs[%d]: %q is not an absolute path", i, p)
		case seen[filepath.Clean(p)]:
			bad("programs[%d]: %q is listed twice", i, p)
		}
		seen[filepath.Clean(p)] = true
	}
	for i, u := range c.Admins.Users {
		if u == "" {
			bad("admins.users[%d]: empty user name", i)
		}
	}
	for i, g := range c.Admins.Groups {
		if g == "" {
			bad("admins.groups[%d]: empty group name", i)
		}
	}
	return errors.Join(errs...)
}
