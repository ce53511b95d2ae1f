package dhcp

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestConfigDefaults(t *testing.T) {
	c := Config{}.WithDefaults()
	if c.VendorClass != "ipvirt" || c.LeaseWait != 20*time.Second || c.MaxInflight != 64 ||
		c.RetransmitBase != 4*time.Second || c.RenewRetryMin != time.Minute || c.ARPProbe == nil || !*c.ARPProbe ||
		c.ARPProbeWait != time.Second || c.ClientPort != 68 || c.ServerPort != 67 || c.Hostname == "" {
		t.Fatalf("defaults %+v", c)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("zero config invalid: %v", err)
	}
}

func TestConfigYAML(t *testing.T) {
	// The daemon's configuration (package config) embeds Config under
	// `dhcp:`; this is that shape.
	doc := `
dhcp:
  server: 10.1.2.3:1067
  relay_address: 10.1.2.9
  vendor_class: acme
  hostname: ts01
  lease_wait: 5s
  max_inflight: 8
  retransmit_base: 500ms
  renew_retry_min: 2s
  arp_probe: false
  arp_probe_wait: 200ms
  client_port: 1068
  server_port: 1067
`
	var top struct {
		DHCP Config `yaml:"dhcp"`
	}
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(&top); err != nil {
		t.Fatal(err)
	}
	c := top.DHCP
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c = c.WithDefaults()
	if c.Server != "10.1.2.3:1067" || c.RelayAddress != "10.1.2.9" || c.VendorClass != "acme" || c.Hostname != "ts01" ||
		c.LeaseWait != 5*time.Second || c.MaxInflight != 8 || c.RetransmitBase != 500*time.Millisecond ||
		c.RenewRetryMin != 2*time.Second || *c.ARPProbe || c.ARPProbeWait != 200*time.Millisecond ||
		c.ClientPort != 1068 || c.ServerPort != 1067 {
		t.Fatalf("decoded %+v", c)
	}
	sa, err := c.serverAddr()
	if err != nil || sa.String() != "10.1.2.3:1067" {
		t.Fatalf("server addr %v %v", sa, err)
	}
	c.Server = "10.1.2.3"
	if sa, _ := c.serverAddr(); sa.Port() != 1067 {
		t.Fatalf("server without port: %v, want server_port", sa)
	}
}

func TestConfigValidate(t *testing.T) {
	f := false
	for _, tc := range []struct {
		name string
		c    Config
		want string // substring naming the bad value
	}{
		{"server not an address", Config{Server: "dhcp.example"}, `server "dhcp.example"`},
		{"server IPv6", Config{Server: "[::1]:67"}, `server "[::1]:67"`},
		{"server port", Config{Server: "10.0.0.1:0"}, `bad port "0"`},
		{"server 0.0.0.0", Config{Server: "0.0.0.0"}, `server "0.0.0.0"`},
		{"relay without server", Config{RelayAddress: "10.0.0.2"}, `relay_address "10.0.0.2" set without server`},
		{"relay bad", Config{Server: "10.0.0.1", RelayAddress: "x"}, `relay_address "x"`},
		{"negative lease_wait", Config{LeaseWait: -time.Second}, "lease_wait -1s"},
		{"tiny retransmit", Config{RetransmitBase: time.Microsecond}, "retransmit_base 1µs"},
		{"max_inflight", Config{MaxInflight: -1}, "max_inflight -1"},
		{"client_port", Config{ClientPort: 70000}, "client_port 70000"},
		{"server_port", Config{ServerPort: -5}, "server_port -5"},
		{"vendor class", Config{VendorClass: strings.Repeat("v", 256)}, "vendor_class"},
		{"arp wait", Config{ARPProbe: &f, ARPProbeWait: -1}, "arp_probe_wait"},
		// 16 times this overflows time.Duration: backoff went negative and
		// backoffNAK panicked in rand.Int64N.
		{"huge retransmit", Config{RetransmitBase: 2562047 * time.Hour}, "retransmit_base 2562047h0m0s: want 1ms..1m0s"},
		{"retransmit over a minute", Config{RetransmitBase: 61 * time.Second}, "retransmit_base 1m1s"},
		{"huge lease_wait", Config{LeaseWait: 1 << 62}, "lease_wait"},
		{"huge renew_retry_min", Config{RenewRetryMin: 25 * time.Hour}, "renew_retry_min 25h0m0s"},
		{"huge arp wait", Config{ARPProbeWait: time.Hour}, "arp_probe_wait 1h0m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestClientID(t *testing.T) {
	a := ClientID([]byte("host-a"), "a:42")
	if len(a) != 23 || a[0] != 0xff || !bytes.Equal(a[5:7], []byte{0, 4}) {
		t.Fatalf("client id %x: want RFC 4361 type 255 with a DUID-UUID", a)
	}
	if a[7+6]>>4 != 8 || a[7+8]>>6 != 2 {
		t.Fatalf("client id %x: UUID version/variant bits", a)
	}
	if !bytes.Equal(a, ClientID([]byte("host-a"), "a:42")) {
		t.Fatal("client id not deterministic")
	}
	seen := map[string]string{}
	for _, tc := range []struct{ host, key string }{
		{"host-a", "a:42"}, {"host-b", "a:42"}, {"host-a", "a:43"}, {"host-a", "a:42|/usr/bin/psql"},
		// length-prefixing the host id keeps these apart
		{"host-a:", "42"}, {"host-", "a:42"},
	} {
		id := string(ClientID([]byte(tc.host), tc.key))
		if prev, dup := seen[id]; dup {
			t.Fatalf("%s/%s collides with %s", tc.host, tc.key, prev)
		}
		seen[id] = tc.host + "/" + tc.key
	}
	mac := fallbackMAC([]byte("host-a"))
	if len(mac) != 6 || mac[0]&1 != 0 || mac[0]&2 == 0 {
		t.Fatalf("fallback MAC %s: want locally administered unicast", mac)
	}
}
