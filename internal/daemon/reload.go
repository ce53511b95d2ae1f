package daemon

import (
	"fmt"
	"time"

	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/internal/source/static"
)

// Reload re-reads the configuration (SIGHUP). A file that fails validation
// changes nothing. Keys that need a restart are reported and keep their old
// values. Nothing a live holder has is taken away: leases the new settings
// would not grant (a pool moved, a program delisted, per-session switched to
// per-program) stay until their holders end, and the log says so.
func (d *Daemon) Reload() error {
	cfg, a, err := Check(d.path)
	if err != nil {
		return fmt.Errorf("reload: keeping the running configuration: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.cfg
	for _, k := range []struct {
		key      string
		old, new any
	}{
		{"socket", old.Socket, cfg.Socket},
		{"http", old.HTTP, cfg.HTTP},
		{"state_dir", old.StateDir, cfg.StateDir},
		{"session_identity", old.SessionIdentity, cfg.SessionIdentity},
		{"source", old.Source, cfg.Source},
		{"adapter", d.adapter.Name, a.Name},
		{"scan_interval", old.ScanInterval, cfg.ScanInterval},
		{"interceptor", old.Interceptor, cfg.Interceptor},
		{"enforce", old.EnforceOn(), cfg.EnforceOn()},
	} {
		if k.old != k.new {
			d.log.Warn("reload: change needs a restart; keeping the running value", "key", k.key,
				"running", fmt.Sprint(k.old), "file", fmt.Sprint(k.new))
		}
	}
	cfg.Socket, cfg.HTTP, cfg.StateDir = old.Socket, old.HTTP, old.StateDir
	cfg.SessionIdentity, cfg.Source, cfg.ScanInterval = old.SessionIdentity, old.Source, old.ScanInterval
	cfg.Interceptor, cfg.Enforce = old.Interceptor, old.Enforce

	if st, ok := d.src.(*static.Source); ok && cfg.StaticPool != old.StaticPool {
		stranded, err := st.Reconfigure(cfg.StaticPool)
		if err != nil {
			return fmt.Errorf("reload: %w", err)
		}
		for _, addr := range stranded {
			d.log.Warn("reload: VIP outside the new static_pool stays with its holder until it ends",
				"vip", addr.String(), "pool", fmt.Sprintf("%s-%s", cfg.StaticPool.Start, cfg.StaticPool.End))
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
