package etcd

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{Endpoints: []string{"http://10.0.0.5:2379"}}
	for _, tc := range []struct {
		name string
		mod  func(c *Config)
		want string // "" valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"no endpoints", func(c *Config) { c.Endpoints = nil }, "etcd.endpoints: missing"},
		{"not a URL", func(c *Config) { c.Endpoints = []string{"10.0.0.5:2379"} }, `"10.0.0.5:2379" is not an http:// or https:// URL`},
		{"https without ca", func(c *Config) { c.Endpoints = []string{"https://e:2379"} }, "etcd.ca is not set"},
		{"tls over http", func(c *Config) { c.CA = "/ca.pem" }, "plain http but TLS files are set"},
		{"cert without key", func(c *Config) { c.Endpoints = []string{"https://e:2379"}; c.CA, c.Cert = "/ca", "/c" }, "set both or neither"},
		{"ttl too short", func(c *Config) { c.LeaseTTL = 2 * time.Second }, "etcd.lease_ttl: 2s is outside 3s..10m0s"},
		{"ttl fraction", func(c *Config) { c.LeaseTTL = 3500 * time.Millisecond }, "not whole seconds"},
		{"slow dial", func(c *Config) { c.LeaseTTL, c.DialTimeout = 3*time.Second, 2*time.Second }, "more than a third of lease_ttl"},
		{"user without password", func(c *Config) { c.Username = "ipvirt" }, "set both or neither"},
		{"relative prefix", func(c *Config) { c.Prefix = "ipvirt" }, "must start with /"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestMargin(t *testing.T) {
	for ttl, want := range map[time.Duration]time.Duration{3 * time.Second: time.Second, 10 * time.Second: 2 * time.Second, time.Minute: 12 * time.Second} {
		if got := Margin(ttl); got != want {
			t.Errorf("Margin(%s) = %s, want %s", ttl, got, want)
		}
	}
}

// Every host reads every other host's records: nothing in one may crash
// or mislead the reader.
func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"host":"sh1","host_id":"0a1b","holder":"a:42","uid":1000,"since":"2026-11-30T03:00:00Z"}`))
	f.Add([]byte(`{"host_id":"XYZ","holder":"a:1"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRecord(b)
		if err != nil {
			return
		}
		if r.HostID == "" || strings.Trim(r.HostID, "0123456789abcdef") != "" || r.Holder == "" ||
			strings.ContainsAny(r.Holder+r.Host, "\x00\n") || len(b) > maxRecord {
			t.Fatalf("accepted %q as %+v", b, r)
		}
	})
}
