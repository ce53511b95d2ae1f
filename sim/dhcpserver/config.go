package dhcpserver

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config describes one synthetic DHCP server and its misbehaviour. The zero
// value of every knob means "behave like a well-run server".
type Config struct {
	// Interface binds the server to one adapter (SO_BINDTODEVICE): replies
	// to clients without an address are broadcast there, and the rogue ARP
	// responder (ARPInUse) listens there. Empty: no binding, relay/unicast
	// clients only (loopback tests).
	Interface string `yaml:"interface"`
	// Listen is the UDP address to receive on ("0.0.0.0:67" by default).
	// Port 0 picks a free port; Server.Addr reports it.
	Listen string `yaml:"listen"`
	// ServerID is option 54 and the address clients unicast renewals to.
	// Default: the Listen IP if specific, else the Interface's first IPv4
	// address.
	ServerID netip.Addr `yaml:"server_id"`

	RangeStart netip.Addr `yaml:"range_start"`
	RangeEnd   netip.Addr `yaml:"range_end"`
	// PrefixLen is the subnet handed out as option 1 (default 24).
	PrefixLen int        `yaml:"prefix_len"`
	Router    netip.Addr `yaml:"router"`

	// LeaseTime is option 51, rounded up to whole seconds (default 1h).
	// Short leases (a few seconds) make renewals happen inside a test.
	LeaseTime time.Duration `yaml:"lease_time"`
	// T1 and T2 (options 58/59) default to RFC 2131's 0.5 and 0.875 of the
	// lease; set them to move the renew/rebind windows.
	T1 time.Duration `yaml:"t1"`
	T2 time.Duration `yaml:"t2"`
	// OfferHold is how long an offered address stays reserved for the client
	// it was offered to (default 30s).
	OfferHold time.Duration `yaml:"offer_hold"`
	// DeclineHold is how long a DECLINEd address is withheld; 0 means for
	// the server's lifetime.
	DeclineHold time.Duration `yaml:"decline_hold"`
	// OfferByMAC offers every client with the same chaddr the lowest free
	// address and reserves nothing until a REQUEST, as dnsmasq does: its
	// offer comes from a hash of chaddr alone. Concurrent exchanges of
	// one host are then all offered one address.
	OfferByMAC bool `yaml:"offer_by_mac"`
	// IgnoreUnoffered stays silent on a SELECTING REQUEST for an address
	// other than the one last offered to that client.
	IgnoreUnoffered bool `yaml:"ignore_unoffered"`

	// Latency delays every answer.
	Latency time.Duration `yaml:"latency"`
	// DropRate is the fraction (0..1) of received packets silently dropped.
	DropRate float64 `yaml:"drop_rate"`
	// NAKRate is the fraction (0..1) of REQUESTs answered with a NAK.
	NAKRate float64 `yaml:"nak_rate"`
	// NAKFirst NAKs the first n REQUESTs of every client.
	NAKFirst int `yaml:"nak_first"`
	// NAKClients always NAKs these clients (ClientKey form: "id:ff00..."
	// or "hw:02:00:00:00:00:01").
	NAKClients []string `yaml:"nak_clients"`
	// Offline lists windows, relative to Start, during which the server
	// receives and ignores everything.
	Offline []Window `yaml:"offline"`
	// ARPInUse are addresses a rogue host claims on Interface: the server
	// answers ARP requests for them with RogueMAC, so an RFC 5227 probe
	// finds them in use. They stay in the range on purpose.
	ARPInUse []netip.Addr `yaml:"arp_in_use"`

	// ClientPort is where replies to clients go (default 68).
	ClientPort int `yaml:"client_port"`
	// Seed makes DropRate/NAKRate reproducible (0: time-based).
	Seed int64 `yaml:"seed"`
}

// Window is a time span relative to the server's start.
type Window struct {
	From  time.Duration `yaml:"from"`
	Until time.Duration `yaml:"until"`
}

func (w Window) contains(d time.Duration) bool { return d >= w.From && d < w.Until }

// withDefaults fills the zero knobs that have non-zero defaults.
func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = "0.0.0.0:67"
	}
	if c.PrefixLen == 0 {
		c.PrefixLen = 24
	}
	if c.LeaseTime == 0 {
		c.LeaseTime = time.Hour
	}
	if c.OfferHold == 0 {
		c.OfferHold = 30 * time.Second
	}
	if c.ClientPort == 0 {
		c.ClientPort = 68
	}
	return c
}

// Validate reports the first bad value, by name.
func (c Config) Validate() error {
	c = c.withDefaults()
	if _, err := netip.ParseAddrPort(c.Listen); err != nil {
		return fmt.Errorf("dhcpserver: listen %q: %w", c.Listen, err)
	}
	if !c.RangeStart.Is4() {
		return fmt.Errorf("dhcpserver: range_start %q: not an IPv4 address", c.RangeStart)
	}
	if !c.RangeEnd.Is4() {
		return fmt.Errorf("dhcpserver: range_end %q: not an IPv4 address", c.RangeEnd)
	}
	if c.RangeEnd.Less(c.RangeStart) {
		return fmt.Errorf("dhcpserver: range_end %s is before range_start %s", c.RangeEnd, c.RangeStart)
	}
	if c.PrefixLen < 1 || c.PrefixLen > 32 {
		return fmt.Errorf("dhcpserver: prefix_len %d: want 1..32", c.PrefixLen)
	}
	if c.ServerID.IsValid() && !c.ServerID.Is4() {
		return fmt.Errorf("dhcpserver: server_id %s: not IPv4", c.ServerID)
	}
	if c.Router.IsValid() && !c.Router.Is4() {
		return fmt.Errorf("dhcpserver: router %s: not IPv4", c.Router)
	}
	if c.LeaseTime < 0 || c.LeaseTime > 0xfffffffe*time.Second {
		return fmt.Errorf("dhcpserver: lease_time %s out of range", c.LeaseTime)
	}
	t1, t2 := c.timers()
	if t1 <= 0 || t2 <= t1 || c.LeaseTime < t2 {
		return fmt.Errorf("dhcpserver: t1 %s / t2 %s: want 0 < t1 < t2 <= lease_time %s", t1, t2, c.LeaseTime)
	}
	for name, r := range map[string]float64{"drop_rate": c.DropRate, "nak_rate": c.NAKRate} {
		if r < 0 || r > 1 {
			return fmt.Errorf("dhcpserver: %s %v: want 0..1", name, r)
		}
	}
	if c.NAKFirst < 0 {
		return fmt.Errorf("dhcpserver: nak_first %d: negative", c.NAKFirst)
	}
	if c.Latency < 0 || c.OfferHold < 0 || c.DeclineHold < 0 {
		return errors.New("dhcpserver: latency, offer_hold and decline_hold must not be negative")
	}
	for i, w := range c.Offline {
		if w.Until <= w.From || w.From < 0 {
			return fmt.Errorf("dhcpserver: offline[%d] from %s until %s: empty or negative window", i, w.From, w.Until)
		}
	}
	for _, a := range c.ARPInUse {
		if !a.Is4() {
			return fmt.Errorf("dhcpserver: arp_in_use %q: not IPv4", a)
		}
	}
	if len(c.ARPInUse) > 0 && c.Interface == "" {
		return errors.New("dhcpserver: arp_in_use needs interface")
	}
	if c.ClientPort < 1 || c.ClientPort > 65535 {
		return fmt.Errorf("dhcpserver: client_port %d out of range", c.ClientPort)
	}
	return nil
}

// timers returns the effective T1 and T2.
func (c Config) timers() (t1, t2 time.Duration) {
	lease := c.withDefaults().LeaseTime
	t1, t2 = c.T1, c.T2
	if t1 == 0 {
		t1 = lease / 2
	}
	if t2 == 0 {
		// lease - lease/8, not lease*7/8: lease_time may be up to
		// 0xfffffffe seconds, and 7 times that overflows time.Duration.
		t2 = lease - lease/8
	}
	return t1, t2
}

// ParseConfig decodes YAML, rejecting unknown keys so that typos in a
// scenario file fail loudly.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("dhcpserver: config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// LoadConfig reads and parses a YAML file.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("dhcpserver: %w", err)
	}
	return ParseConfig(data)
}

// secs converts a duration to a whole-second DHCP time, rounding up so that
// sub-second test leases do not become 0 (which clients treat as invalid).
func secs(d time.Duration) uint32 {
	s := (d + time.Second - 1) / time.Second
	if s < 1 {
		s = 1
	}
	return uint32(s)
}
