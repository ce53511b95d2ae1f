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
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/backend/source/dhcp"
)

// DefaultPath is where ipvirtd looks for its config.
const DefaultPath = "/etc/ipvirt/ipvirt.yaml"

// Defaults for the keys a config may leave out.
const (
	DefaultSocket       = "/run/ipvirt/ipvirt.sock"
	DefaultHTTP         = "127.0.0.1:9477"
	DefaultStateDir     = "/var/lib/ipvirt"
	DefaultGrace        = 5 * time.Second
	DefaultScanInterval = time.Second
)

// Mode is how VIPs are handed out.
type Mode string

const (
	// PerSession: every process of a session shares one VIP.
	PerSession Mode = "per-session"
	// PerProgram: only listed programs get a VIP, one per (session, program).
	PerProgram Mode = "per-program"
)

// Exhausted is what a caller gets when no VIP is available.
type Exhausted string

const (
	// ExhaustedMachineIP falls back to the machine's address (Windows' default).
	ExhaustedMachineIP Exhausted = "machine-ip"
	// ExhaustedDeny refuses the call (Windows' "do not use the server IP
	// address when a virtual IP is not available" policy).
	ExhaustedDeny Exhausted = "deny"
)

// Identity is how a caller's login session is found.
type Identity string

const (
	// IdentityAudit uses the kernel audit session (/proc/PID/sessionid), set
	// by pam_loginuid at every login.
	IdentityAudit Identity = "audit"
	// IdentityPOSIX uses the POSIX session (getsid), for hosts without audit
	// sessions and for unprivileged development.
	IdentityPOSIX Identity = "posix"
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

// Source names where VIPs come from.
const (
	SourceStatic = "static"
	SourceDHCP   = "dhcp"
)

// Config is the parsed ipvirt.yaml.
type Config struct {
	Enabled bool `yaml:"enabled"`
	Mode    Mode `yaml:"mode"`
	// Adapter is an interface name (eth0), a MAC address (as the seed's
	// AdapterAddress) or a subnet (10.0.0.0/24, as the Windows group policy):
	// the adapter holding an address in it.
	Adapter    string     `yaml:"adapter"`
	Source     string     `yaml:"source"`
	StaticPool StaticPool `yaml:"static_pool"`
	// DHCP configures the DHCP client (source: dhcp): see dhcp.Config.
	DHCP            dhcp.Config `yaml:"dhcp"`
	Programs        []string    `yaml:"programs"`
	Admins          Admins      `yaml:"admins"`
	OnExhausted     Exhausted   `yaml:"on_exhausted"`
	Grace           Duration    `yaml:"grace"`
	StateDir        string      `yaml:"state_dir"`
	Socket          string      `yaml:"socket"`
	HTTP            string      `yaml:"http"`
	SessionIdentity Identity    `yaml:"session_identity"`
	// ScanInterval is how often live sessions and programs are rescanned to
	// find holders that ended.
	ScanInterval Duration `yaml:"scan_interval"`
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
}

// PreallocateOn resolves Preallocate and its source-dependent default.
func (c Config) PreallocateOn() bool {
	if c.Preallocate != nil {
		return *c.Preallocate
	}
	return c.Source == SourceDHCP || c.Interceptor.Kernel()
}

// EnforceOn resolves Enforce and its default.
func (c Config) EnforceOn() bool {
	if c.Enforce != nil {
		return *c.Enforce && c.Interceptor.Kernel()
	}
	return c.Interceptor.Kernel()
}

// StaticPool is the seed's TSVIPool: an inclusive address range and the
// subnet mask handed out with each address.
type StaticPool struct {
	Start      netip.Addr `yaml:"start"`
	End        netip.Addr `yaml:"end"`
	SubnetMask netip.Addr `yaml:"subnet_mask"`
}

// Admins lists the users and groups whose sessions are never virtualized.
type Admins struct {
	Users  []string `yaml:"users"`
	Groups []string `yaml:"groups"`
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
		Mode:            PerSession,
		Source:          SourceDHCP,
		Admins:          Admins{Users: []string{"root"}, Groups: []string{"sudo", "wheel"}},
		OnExhausted:     ExhaustedMachineIP,
		Grace:           Duration(DefaultGrace),
		StateDir:        DefaultStateDir,
		Socket:          DefaultSocket,
		HTTP:            DefaultHTTP,
		SessionIdentity: IdentityAudit,
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
	case PerSession, PerProgram:
	default:
		bad("mode: %q is not per-session or per-program", c.Mode)
	}
	switch c.OnExhausted {
	case ExhaustedMachineIP, ExhaustedDeny:
	default:
		bad("on_exhausted: %q is not machine-ip or deny", c.OnExhausted)
	}
	switch c.Interceptor {
	case InterceptorPreload, InterceptorBPF, InterceptorBoth:
	default:
		bad("interceptor: %q is not preload, bpf or both", c.Interceptor)
	}
	if c.Interceptor.Kernel() && c.SessionIdentity == IdentityPOSIX {
		bad("interceptor: %s needs session_identity: audit (the kernel programs know a task's audit session, not its POSIX session)", c.Interceptor)
	}
	if c.Enforce != nil && *c.Enforce && !c.Interceptor.Kernel() {
		bad("enforce: true needs interceptor: bpf or both (only the kernel can refuse a bind)")
	}
	switch c.SessionIdentity {
	case IdentityAudit, IdentityPOSIX:
	default:
		bad("session_identity: %q is not audit or posix", c.SessionIdentity)
	}
	switch c.Source {
	case SourceStatic:
		if err := c.StaticPool.Validate(); err != nil {
			errs = append(errs, err)
		}
	case SourceDHCP:
		if err := c.DHCP.Validate(); err != nil {
			errs = append(errs, err)
		}
		if c.StaticPool != (StaticPool{}) {
			bad("static_pool: set, but source is dhcp (the default); write source: static to use the pool")
		}
	default:
		bad("source: %q is not static or dhcp", c.Source)
	}
	if c.Adapter == "" && c.Enabled {
		bad("adapter: missing; name the interface (eth0), its MAC address, or a subnet (10.0.0.0/24)")
	}
	if c.Grace < 0 {
		bad("grace: %s is negative", c.Grace.Std())
	}
	if c.ScanInterval.Std() < 10*time.Millisecond || c.ScanInterval.Std() > time.Minute {
		bad("scan_interval: %s is outside 10ms..1m", c.ScanInterval.Std())
	}
	if c.Socket == "" || !filepath.IsAbs(c.Socket) {
		bad("socket: %q is not an absolute path", c.Socket)
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

// Validate checks the pool's own geometry: start ≤ end, both IPv4 in one
// subnet under the mask, neither the network nor the broadcast address.
func (p StaticPool) Validate() error {
	switch {
	case !p.Start.IsValid():
		return errors.New("static_pool.start: missing")
	case !p.End.IsValid():
		return errors.New("static_pool.end: missing")
	case !p.SubnetMask.IsValid():
		return errors.New("static_pool.subnet_mask: missing")
	case !p.Start.Is4():
		return fmt.Errorf("static_pool.start: %s is not an IPv4 address", p.Start)
	case !p.End.Is4():
		return fmt.Errorf("static_pool.end: %s is not an IPv4 address", p.End)
	}
	bits, ok := MaskBits(p.SubnetMask)
	if !ok {
		return fmt.Errorf("static_pool.subnet_mask: %s is not a contiguous IPv4 mask", p.SubnetMask)
	}
	if bits > 30 {
		return fmt.Errorf("static_pool.subnet_mask: %s (/%d) leaves no room for hosts", p.SubnetMask, bits)
	}
	if p.End.Less(p.Start) {
		return fmt.Errorf("static_pool: start %s is after end %s", p.Start, p.End)
	}
	subnet := p.Subnet()
	if !subnet.Contains(p.End) {
		return fmt.Errorf("static_pool: start %s and end %s are not in one subnet under mask %s (%s)",
			p.Start, p.End, p.SubnetMask, subnet)
	}
	if p.Start == subnet.Addr() {
		return fmt.Errorf("static_pool.start: %s is the network address of %s", p.Start, subnet)
	}
	if bcast := Broadcast(subnet); p.End == bcast {
		return fmt.Errorf("static_pool.end: %s is the broadcast address of %s", p.End, subnet)
	}
	return nil
}

// Subnet returns the pool's network: start masked by subnet_mask.
func (p StaticPool) Subnet() netip.Prefix {
	bits, _ := MaskBits(p.SubnetMask)
	pfx, _ := p.Start.Prefix(bits)
	return pfx
}

// Size returns the number of addresses in the pool.
func (p StaticPool) Size() int {
	return int(V4(p.End)-V4(p.Start)) + 1
}

// MaskBits converts a dotted mask to a prefix length; ok is false for a
// non-IPv4 or non-contiguous mask.
func MaskBits(m netip.Addr) (int, bool) {
	if !m.Is4() {
		return 0, false
	}
	v := V4(m)
	ones := 0
	for ones < 32 && v&(1<<(31-ones)) != 0 {
		ones++
	}
	if ones < 32 && v<<ones != 0 {
		return 0, false
	}
	return ones, true
}

// V4 returns an IPv4 address as a host-order integer.
func V4(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// FromV4 is the inverse of V4.
func FromV4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Broadcast returns the last address of an IPv4 prefix.
func Broadcast(p netip.Prefix) netip.Addr {
	return FromV4(V4(p.Masked().Addr()) | ^uint32(0)>>p.Bits())
}

// UID resolves an admins.users entry that is a number to a uid.
func UID(s string) (uint32, bool) {
	v, err := strconv.ParseUint(s, 10, 32)
	return uint32(v), err == nil
}
