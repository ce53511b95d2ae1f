package daemon

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ipvirt/ipvirt/internal/adapter"
	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/source"
	"github.com/ipvirt/ipvirt/internal/source/dhcp"
	"github.com/ipvirt/ipvirt/internal/source/etcd"
	"github.com/ipvirt/ipvirt/lsp/bpf"
)

// restartKey is a configuration key that a reload cannot change.
type restartKey struct {
	name string
	// value is what a change is judged by: the key's effective value, given
	// the configuration and the adapter it resolved to.
	value func(c config.Config, a adapter.Adapter) any
	// keep copies the running value into a reloaded configuration.
	keep func(next *config.Config, running config.Config)
	// applies, when set, says whether the key matters to the running
	// configuration at all (the dhcp section does only with source: dhcp).
	applies func(running config.Config) bool
}

// field is a restart-only key that is one field of the configuration,
// compared as written.
func field[T comparable](name string, f func(c *config.Config) *T) restartKey {
	return restartKey{
		name:  name,
		value: func(c config.Config, _ adapter.Adapter) any { return *f(&c) },
		keep:  func(next *config.Config, running config.Config) { *f(next) = *f(&running) },
	}
}

// sectionKey is a key of a source's own section (dhcp, etcd), which counts
// only while that source runs: the running source keeps the settings it
// was built with (the DHCP client's exchanges and bindings, the etcd
// connection, lease and prefix). Judged by its effective value: unset and
// an explicit default are the same. section reads the section with its
// defaults; swap puts the running section into the next configuration.
func sectionKey[S any, T comparable](source, name string, section func(config.Config) S, swap func(next *config.Config, running config.Config), f func(S) T) restartKey {
	return restartKey{
		name:    source + "." + name,
		value:   func(c config.Config, _ adapter.Adapter) any { return f(section(c)) },
		keep:    swap,
		applies: func(running config.Config) bool { return running.Source == source },
	}
}

func dhcpField[T comparable](name string, f func(d dhcp.Config) T) restartKey {
	return sectionKey(dhcp.Name, name, func(c config.Config) dhcp.Config { return c.DHCP.WithDefaults() },
		func(next *config.Config, running config.Config) { next.DHCP = running.DHCP }, f)
}

func etcdField[T comparable](name string, f func(e etcd.Config) T) restartKey {
	return sectionKey(etcd.Name, name, func(c config.Config) etcd.Config { return c.Etcd.WithDefaults() },
		func(next *config.Config, running config.Config) { next.Etcd = running.Etcd }, f)
}

// restartOnly lists every key that needs a restart, in the order a reload
// reports them. A reload warns about each whose value changed and keeps
// the running value.
var restartOnly = []restartKey{
	field("socket", func(c *config.Config) *string { return &c.Socket }),
	field("http", func(c *config.Config) *string { return &c.HTTP }),
	field("state_dir", func(c *config.Config) *string { return &c.StateDir }),
	field("session_identity", func(c *config.Config) *identity.Kind { return &c.SessionIdentity }),
	// The resolver that applies it is built at start-up and shared by the
	// socket server, the scan and the census; and switching to pam takes
	// VIPs from live unregistered sessions, which a reload never does.
	field("session_trust", func(c *config.Config) *identity.Trust { return &c.SessionTrust }),
	field("source", func(c *config.Config) *string { return &c.Source }),
	{
		// Judged by the interface the key resolves to: a MAC address or a
		// subnet naming the running adapter is no change.
		name:  "adapter",
		value: func(_ config.Config, a adapter.Adapter) any { return a.Name },
		keep:  func(next *config.Config, running config.Config) { next.Adapter = running.Adapter },
	},
	field("scan_interval", func(c *config.Config) *config.Duration { return &c.ScanInterval }),
	field("interceptor", func(c *config.Config) *config.Interceptor { return &c.Interceptor }),
	field("scope", func(c *config.Config) *string { return &c.Scope }),
	{
		// Judged by its effect: unset and an explicit default are the same.
		name:  "enforce",
		value: func(c config.Config, _ adapter.Adapter) any { return c.EnforceOn() },
		keep:  func(next *config.Config, running config.Config) { next.Enforce = running.Enforce },
	},
	dhcpField("server", func(d dhcp.Config) string { return d.Server }),
	dhcpField("relay_address", func(d dhcp.Config) string { return d.RelayAddress }),
	dhcpField("vendor_class", func(d dhcp.Config) string { return d.VendorClass }),
	dhcpField("hostname", func(d dhcp.Config) string { return d.Hostname }),
	dhcpField("lease_wait", func(d dhcp.Config) time.Duration { return d.LeaseWait }),
	dhcpField("max_inflight", func(d dhcp.Config) int { return d.MaxInflight }),
	dhcpField("retransmit_base", func(d dhcp.Config) time.Duration { return d.RetransmitBase }),
	dhcpField("renew_retry_min", func(d dhcp.Config) time.Duration { return d.RenewRetryMin }),
	dhcpField("arp_probe", func(d dhcp.Config) bool { return *d.ARPProbe }),
	dhcpField("arp_probe_wait", func(d dhcp.Config) time.Duration { return d.ARPProbeWait }),
	dhcpField("client_port", func(d dhcp.Config) int { return d.ClientPort }),
	dhcpField("server_port", func(d dhcp.Config) int { return d.ServerPort }),
	etcdField("endpoints", func(e etcd.Config) string { return strings.Join(e.Endpoints, ",") }),
	etcdField("prefix", func(e etcd.Config) string { return e.Prefix }),
	etcdField("lease_ttl", func(e etcd.Config) time.Duration { return e.LeaseTTL }),
	etcdField("dial_timeout", func(e etcd.Config) time.Duration { return e.DialTimeout }),
	etcdField("ca", func(e etcd.Config) string { return e.CA }),
	etcdField("cert", func(e etcd.Config) string { return e.Cert }),
	etcdField("key", func(e etcd.Config) string { return e.Key }),
	etcdField("username", func(e etcd.Config) string { return e.Username }),
	etcdField("password_file", func(e etcd.Config) string { return e.PasswordFile }),
	{
		// Every host of an etcd farm lists the same range: one host
		// changing it alone would hand out addresses the others do not
		// count as the farm's. A static source reloads its pool.
		name:    "static_pool",
		value:   func(c config.Config, _ adapter.Adapter) any { return c.StaticPool },
		keep:    func(next *config.Config, running config.Config) { next.StaticPool = running.StaticPool },
		applies: func(running config.Config) bool { return running.Source == etcd.Name },
	},
}

// Reload re-reads the configuration (SIGHUP). A file that fails validation
// changes nothing. Keys that need a restart (restartOnly) are reported and
// keep their running values. Nothing a live holder has is taken away:
// leases the new settings would not grant (a pool moved, a program
// delisted, per-session switched to per-program) stay until their holders
// end, and the log says so.
func (d *Daemon) Reload() error {
	cfg, a, err := Check(d.path)
	if err != nil {
		return fmt.Errorf("reload: keeping the running configuration: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.cfg
	// Every key is judged against the file as written before any running
	// value is put back: enforce's effect depends on interceptor.
	for _, k := range restartOnly {
		if k.applies != nil && !k.applies(old) {
			continue
		}
		if running, file := k.value(old, d.adapter), k.value(cfg, a); running != file {
			d.log.Warn("reload: change needs a restart; keeping the running value", "key", k.name,
				"running", fmt.Sprint(running), "file", fmt.Sprint(file))
		}
	}
	for _, k := range restartOnly {
		if k.applies == nil || k.applies(old) {
			k.keep(&cfg, old)
		}
	}

	if r, ok := d.src.(source.Reconfigurer); ok && cfg.StaticPool != old.StaticPool {
		// No census has looked at the new pool: grants wait for one. While
		// the pool changes, censuses look at both.
		prev, next := d.census.scope.Load(), scopeFor(cfg, d.adapter, nil)
		d.census.scope.Store(&scope{include: append(slices.Clone(prev.include), next.include...), exclude: next.exclude})
		d.mgr.CensusScopeChanged()
		stranded, err := r.Reconfigure(cfg.StaticPool.Range())
		d.census.scope.Store(next)
		if err != nil {
			d.census.scope.Store(prev)
			return fmt.Errorf("reload: %w", err)
		}
		for _, addr := range stranded {
			d.log.Warn("reload: VIP outside the new static_pool stays with its holder until it ends",
				"vip", addr.String(), "pool", fmt.Sprintf("%s-%s", cfg.StaticPool.Start, cfg.StaticPool.End))
		}
		if d.kernel != nil {
			// Enforcement guards the pool the kernel was told of: the new
			// one from now on. A stranded VIP stays guarded as a held
			// address (the owners map) until its holder ends.
			if err := d.kernel.ic.SetPoolRanges([]bpf.Range{{Start: cfg.StaticPool.Start, End: cfg.StaticPool.End}}); err != nil {
				d.log.Error("reload: kernel interceptor keeps guarding the old pool", "err", err)
			}
		}
	}
	d.cfg = cfg
	d.users.Flush()
	d.applyLocked("reload")
	d.reloadedAt = time.Now()
	d.log.Info("configuration reloaded", "path", d.path, "enabled", cfg.Enabled, "mode", cfg.Mode,
		"on_exhausted", cfg.OnExhausted, "programs", len(d.programsFor(cfg)))
	return nil
}

// Config returns the running configuration.
func (d *Daemon) Config() config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}
