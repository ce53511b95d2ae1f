package etcd

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// Config is the `etcd:` section of ipvirt.yaml (source: etcd). The range
// itself is static_pool's: every host of the farm lists the same one.
type Config struct {
	// Endpoints are the cluster's client URLs (http://10.0.0.5:2379, or
	// https:// with ca/cert/key).
	Endpoints []string `yaml:"endpoints"`
	// Prefix is the key prefix every host of the farm shares (default
	// "/ipvirt/"). Farms sharing one cluster need distinct prefixes.
	Prefix string `yaml:"prefix"`
	// LeaseTTL is the TTL of each host's etcd lease, which all its VIP
	// keys are bound to (default 10s). A host that cannot renew withdraws
	// its VIPs before this runs out at the cluster; a host killed and
	// restarted within it keeps them.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
	// DialTimeout bounds connecting and each request (default 2s).
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// CA, Cert and Key are PEM files for TLS: the CA that signed the
	// cluster's certificates, and this host's client certificate and key
	// (both or neither).
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// Username and PasswordFile are etcd's own authentication; the password
	// is read from the file (mode 0600, owned by root), never from the
	// configuration.
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
}

// Defaults and bounds.
const (
	DefaultPrefix      = "/ipvirt/"
	DefaultLeaseTTL    = 10 * time.Second
	DefaultDialTimeout = 2 * time.Second
	// MinLeaseTTL leaves room for the renewal rhythm (TTL/3) and the
	// safety margin; MaxLeaseTTL bounds how long a dead host's VIPs stay
	// taken.
	MinLeaseTTL = 3 * time.Second
	MaxLeaseTTL = 10 * time.Minute
)

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(c.Prefix, "/") {
		c.Prefix += "/"
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	return c
}

// Validate checks the section as written (files are read by New).
func (c Config) Validate() error {
	c = c.WithDefaults()
	if len(c.Endpoints) == 0 {
		return errors.New("etcd.endpoints: missing; list the cluster's client URLs (http://10.0.0.5:2379)")
	}
	tlsWanted := c.CA != "" || c.Cert != "" || c.Key != ""
	for i, e := range c.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("etcd.endpoints[%d]: %q is not an http:// or https:// URL", i, e)
		}
		if u.Scheme == "https" && c.CA == "" {
			return fmt.Errorf("etcd.endpoints[%d]: %q is https but etcd.ca is not set", i, e)
		}
		if u.Scheme == "http" && tlsWanted {
			return fmt.Errorf("etcd.endpoints[%d]: %q is plain http but TLS files are set", i, e)
		}
	}
	if (c.Cert == "") != (c.Key == "") {
		return errors.New("etcd.cert and etcd.key: set both or neither")
	}
	if c.LeaseTTL < MinLeaseTTL || c.LeaseTTL > MaxLeaseTTL {
		return fmt.Errorf("etcd.lease_ttl: %s is outside %s..%s", c.LeaseTTL, MinLeaseTTL, MaxLeaseTTL)
	}
	if c.LeaseTTL%time.Second != 0 {
		return fmt.Errorf("etcd.lease_ttl: %s is not whole seconds (etcd counts lease TTLs in seconds)", c.LeaseTTL)
	}
	if c.DialTimeout < 100*time.Millisecond || c.DialTimeout > time.Minute {
		return fmt.Errorf("etcd.dial_timeout: %s is outside 100ms..1m", c.DialTimeout)
	}
	if c.DialTimeout*3 > c.LeaseTTL {
		return fmt.Errorf("etcd.dial_timeout: %s is more than a third of lease_ttl %s: one slow renewal would fence the host", c.DialTimeout, c.LeaseTTL)
	}
	if (c.Username == "") != (c.PasswordFile == "") {
		return errors.New("etcd.username and etcd.password_file: set both or neither")
	}
	if strings.ContainsAny(c.Prefix, "\x00\n") || !strings.HasPrefix(c.Prefix, "/") {
		return fmt.Errorf("etcd.prefix: %q must start with / and hold no NUL or newline", c.Prefix)
	}
	return nil
}

// tlsConfig loads the TLS files, or returns nil without them.
func (c Config) tlsConfig() (*tls.Config, error) {
	if c.CA == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(c.CA)
	if err != nil {
		return nil, fmt.Errorf("etcd.ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("etcd.ca: %s holds no PEM certificate", c.CA)
	}
	t := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if c.Cert != "" {
		pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("etcd.cert/etcd.key: %w", err)
		}
		t.Certificates = []tls.Certificate{pair}
	}
	return t, nil
}

// password reads password_file, which must not be readable by others.
func (c Config) password() (string, error) {
	if c.PasswordFile == "" {
		return "", nil
	}
	fi, err := os.Stat(c.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("etcd.password_file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("etcd.password_file: %s is mode %o; make it 0600", c.PasswordFile, fi.Mode().Perm())
	}
	b, err := os.ReadFile(c.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("etcd.password_file: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}
