package dhcp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"
)

// Config is the `dhcp:` section of ipvirt.yaml. Zero fields take the
// defaults documented on each; call WithDefaults (New does) before use.
type Config struct {
	// Server, when set ("10.0.0.1" or "10.0.0.1:67"), switches from
	// broadcasting on the adapter to relay mode: every message goes by
	// unicast UDP to this server with giaddr = RelayAddress, and answers
	// come back to RelayAddress:ServerPort, as through a BOOTP relay agent
	// (RFC 1542). For routed networks, and tests on loopback.
	Server string `yaml:"server"`
	// RelayAddress is giaddr in relay mode: a local address inside the
	// subnet the VIPs come from (the server picks the subnet by it).
	// Default: the adapter's own address.
	RelayAddress string `yaml:"relay_address"`
	// VendorClass is sent as option 60 so server admins can tell ipvirt
	// leases apart (default "ipvirt").
	VendorClass string `yaml:"vendor_class"`
	// Hostname is sent as option 12 (default: the host name).
	Hostname string `yaml:"hostname"`
	// LeaseWait bounds how long Acquire waits for a lease, including the
	// wait for an exchange slot (default 20s).
	LeaseWait time.Duration `yaml:"lease_wait"`
	// MaxInflight bounds concurrent exchanges awaiting an answer, so a
	// logon storm does not flood the server (default 64).
	MaxInflight int `yaml:"max_inflight"`
	// RetransmitBase is RFC 2131 4.1's first retransmission delay (default
	// 4s); later ones double up to 16x, each ±RetransmitBase/4 of jitter.
	// A DECLINE is followed by 2.5x this before trying again (RFC 2131
	// 3.1.5's ten seconds at the default).
	RetransmitBase time.Duration `yaml:"retransmit_base"`
	// RenewRetryMin is the shortest wait between renew/rebind attempts
	// (RFC 2131 4.4.5: 60s, the default). Shorten for tests.
	RenewRetryMin time.Duration `yaml:"renew_retry_min"`
	// ARPProbe enables the RFC 5227 probe of each address before it is
	// handed out (default true); a conflict DECLINEs it.
	ARPProbe *bool `yaml:"arp_probe"`
	// ARPProbeWait is how long a probe listens for a conflict (three
	// probes spread over it; default 1s).
	ARPProbeWait time.Duration `yaml:"arp_probe_wait"`
	// ClientPort and ServerPort are the DHCP UDP ports (68, 67); change
	// them only for unprivileged tests.
	ClientPort int `yaml:"client_port"`
	ServerPort int `yaml:"server_port"`
}

// Defaults.
const (
	DefaultVendorClass    = "ipvirt"
	DefaultLeaseWait      = 20 * time.Second
	DefaultMaxInflight    = 64
	DefaultRetransmitBase = 4 * time.Second
	DefaultRenewRetryMin  = 60 * time.Second
	DefaultARPProbeWait   = time.Second
)

// Upper bounds of the durations, far above any sensible setting and far
// below where the arithmetic on them (up to 16 times retransmit_base)
// could overflow.
const (
	MaxLeaseWait      = time.Hour
	MaxRetransmitBase = time.Minute
	MaxRenewRetryMin  = 24 * time.Hour
	MaxARPProbeWait   = time.Minute
)

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.VendorClass == "" {
		c.VendorClass = DefaultVendorClass
	}
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
	}
	if c.LeaseWait == 0 {
		c.LeaseWait = DefaultLeaseWait
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.RetransmitBase == 0 {
		c.RetransmitBase = DefaultRetransmitBase
	}
	if c.RenewRetryMin == 0 {
		c.RenewRetryMin = DefaultRenewRetryMin
	}
	if c.ARPProbe == nil {
		t := true
		c.ARPProbe = &t
	}
	if c.ARPProbeWait == 0 {
		c.ARPProbeWait = DefaultARPProbeWait
	}
	if c.ClientPort == 0 {
		c.ClientPort = 68
	}
	if c.ServerPort == 0 {
		c.ServerPort = 67
	}
	return c
}

// Validate checks c after defaults, naming the first bad value.
func (c Config) Validate() error {
	c = c.WithDefaults()
	if c.Server != "" {
		if _, err := c.serverAddr(); err != nil {
			return err
		}
	}
	if c.RelayAddress != "" {
		a, err := netip.ParseAddr(c.RelayAddress)
		if err != nil || !a.Is4() || a.IsUnspecified() {
			return fmt.Errorf("dhcp: relay_address %q: want a local IPv4 address", c.RelayAddress)
		}
		if c.Server == "" {
			return fmt.Errorf("dhcp: relay_address %q set without server (relay mode needs a server)", c.RelayAddress)
		}
	}
	if len(c.VendorClass) > 255 {
		return fmt.Errorf("dhcp: vendor_class %q: longer than 255 bytes", c.VendorClass)
	}
	if len(c.Hostname) > 255 {
		return fmt.Errorf("dhcp: hostname %q: longer than 255 bytes", c.Hostname)
	}
	// Upper bounds too: the retransmission schedule multiplies
	// retransmit_base by up to 16 (backoff) and the NAK pause by 4, and a
	// product past time.Duration's 292 years turns negative: a timer that
	// fires at once, and a panicking rand.Int64N in backoffNAK.
	for _, d := range []struct {
		name string
		v    time.Duration
		max  time.Duration
	}{{"lease_wait", c.LeaseWait, MaxLeaseWait}, {"retransmit_base", c.RetransmitBase, MaxRetransmitBase},
		{"renew_retry_min", c.RenewRetryMin, MaxRenewRetryMin}, {"arp_probe_wait", c.ARPProbeWait, MaxARPProbeWait}} {
		if d.v < time.Millisecond || d.v > d.max {
			return fmt.Errorf("dhcp: %s %s: want 1ms..%s", d.name, d.v, d.max)
		}
	}
	if c.MaxInflight < 1 || c.MaxInflight > 65536 {
		return fmt.Errorf("dhcp: max_inflight %d: want 1..65536", c.MaxInflight)
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"client_port", c.ClientPort}, {"server_port", c.ServerPort}} {
		if p.v < 1 || p.v > 65535 {
			return fmt.Errorf("dhcp: %s %d: want 1..65535", p.name, p.v)
		}
	}
	return nil
}

// serverAddr parses Server, defaulting the port to ServerPort.
func (c Config) serverAddr() (netip.AddrPort, error) {
	host, port := c.Server, strconv.Itoa(c.WithDefaults().ServerPort)
	if h, p, err := net.SplitHostPort(c.Server); err == nil {
		host, port = h, p
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.Is4() || a.IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("dhcp: server %q: want an IPv4 address, optionally with :port", c.Server)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return netip.AddrPort{}, fmt.Errorf("dhcp: server %q: bad port %q", c.Server, port)
	}
	return netip.AddrPortFrom(a, uint16(n)), nil
}

// Interface is the adapter the VIPs live on.
type Interface struct {
	Name  string
	Index int
	// MAC is chaddr in every message. An adapter without one (loopback,
	// tun) gets a stable locally administered MAC derived from the host id.
	MAC net.HardwareAddr
	// Prefix is the adapter's own IPv4 address and subnet: the default
	// relay address, and the VIP subnet when the server sends no mask.
	Prefix netip.Prefix
}

// InterfaceByName looks an adapter up in the current network namespace.
func InterfaceByName(name string) (Interface, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return Interface{}, fmt.Errorf("dhcp: interface %q: %w", name, err)
	}
	out := Interface{Name: ifi.Name, Index: ifi.Index, MAC: ifi.HardwareAddr}
	addrs, err := ifi.Addrs()
	if err != nil {
		return Interface{}, fmt.Errorf("dhcp: interface %q addresses: %w", name, err)
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || n.IP.To4() == nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(n.IP.To4())
		bits, _ := n.Mask.Size()
		out.Prefix = netip.PrefixFrom(ip, bits)
		break
	}
	return out, nil
}

var errClosed = errors.New("dhcp: source closed")
