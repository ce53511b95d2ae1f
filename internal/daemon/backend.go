package daemon

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/ipvirt/ipvirt/backend/api"

	"github.com/ipvirt/ipvirt/internal/alloc"
	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/internal/server"
	"github.com/ipvirt/ipvirt/internal/store"
)

// The daemon is the server's Backend: the manager plus the configuration and
// the run-time program list.
var _ server.Backend = (*Daemon)(nil)

// Query implements server.Backend.
func (d *Daemon) Query(ctx context.Context, c identity.Caller) alloc.Answer {
	a := d.mgr.Query(ctx, c)
	d.noteUnregistered(c, a)
	return a
}

// QueryNow implements server.Backend.
func (d *Daemon) QueryNow(c identity.Caller) (alloc.Answer, bool) {
	a, ok := d.mgr.QueryNow(c)
	if ok {
		d.noteUnregistered(c, a)
	}
	return a, ok
}

// NeedsProgram implements server.Backend.
func (d *Daemon) NeedsProgram() bool { return d.mgr.NeedsProgram() }

// Sessions implements server.Backend.
func (d *Daemon) Sessions(only *uint32) []api.SessionReport {
	rows := d.mgr.Sessions(only, identity.LogindDir)
	for i, r := range rows {
		if reg, ok := d.registry.Get(r.ID); ok && r.Kind == lease.KindAudit.String() {
			rows[i].Registered = reg.Registered
		}
	}
	return rows
}

// ReleaseSession implements server.Backend.
func (d *Daemon) ReleaseSession(s lease.Session) []lease.Lease {
	released := d.mgr.ReleaseSession(s)
	if len(released) > 0 {
		d.log.Warn("session released by administrator", "session", s.String(), "leases", len(released))
	}
	return released
}

// IsAdmin implements server.Backend.
func (d *Daemon) IsAdmin(uid uint32) bool {
	d.mu.Lock()
	admins := d.cfg.Admins
	d.mu.Unlock()
	return d.users.IsAdmin(uid, admins.Users, admins.Groups)
}

// UserName implements server.Backend.
func (d *Daemon) UserName(uid uint32) string { return d.users.Name(uid) }

// Status implements server.Backend.
func (d *Daemon) Status() api.StatusReport {
	d.mu.Lock()
	cfg, reloaded, programs := d.cfg, d.reloadedAt, len(d.programsFor(d.cfg))
	d.mu.Unlock()
	return api.StatusReport{Status: d.mgr.Status(), Version: Version, Config: d.path, Started: d.started,
		Adapter: d.adapter.Name, Identity: string(cfg.SessionIdentity), Programs: programs,
		StateDir: cfg.StateDir, Socket: cfg.Socket, HTTP: cfg.HTTP, ReloadedAt: reloaded,
		Interceptor: d.interceptorState(cfg), SessionTrust: string(cfg.SessionTrust), Registered: d.registry.Len()}
}

// policyFor is the effective policy: the file's program list with the
// run-time additions and removals applied.
func policyFor(cfg config.Config, overrides map[string]store.ProgramOverride) policy.Settings {
	return policy.Settings{Enabled: cfg.Enabled, Mode: cfg.Mode, Programs: policy.NewPrograms(effectivePaths(cfg, overrides))}
}

func effectivePaths(cfg config.Config, overrides map[string]store.ProgramOverride) []string {
	var out []string
	for _, p := range cfg.Programs {
		if overrides[filepath.Clean(p)] != store.ProgramRemoved {
			out = append(out, filepath.Clean(p))
		}
	}
	for p, o := range overrides {
		if o == store.ProgramAdded && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// Programs implements server.Backend.
func (d *Daemon) Programs() []api.ProgramEntry {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.programsFor(d.cfg)
}

func (d *Daemon) programsFor(cfg config.Config) []api.ProgramEntry {
	inFile := map[string]bool{}
	for _, p := range cfg.Programs {
		inFile[filepath.Clean(p)] = true
	}
	var out []api.ProgramEntry
	for _, p := range effectivePaths(cfg, d.store.ProgramOverrides()) {
		from := "runtime"
		if inFile[p] {
			from = "config"
		}
		out = append(out, api.ProgramEntry{Path: p, From: from, Warning: policy.CheckProgram(p)})
	}
	return out
}

// AddProgram implements server.Backend: the Win32_TSVirtualIP AddProgram of
// ipvirt, persisted across restarts.
func (d *Daemon) AddProgram(path string) ([]api.ProgramEntry, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("programs add: %q is not an absolute path", path)
	}
	path = filepath.Clean(path)
	d.mu.Lock()
	defer d.mu.Unlock()
	over := store.ProgramAdded
	if slices.Contains(cleaned(d.cfg.Programs), path) {
		over = "" // listed in the file: adding back just drops the removal
	}
	if err := d.store.SetProgramOverride(path, over); err != nil {
		return nil, err
	}
	d.applyLocked("programs add " + path)
	return d.programsFor(d.cfg), nil
}

// RemoveProgram implements server.Backend. Holders running the program keep
// their VIPs until the program exits.
func (d *Daemon) RemoveProgram(path string) ([]api.ProgramEntry, error) {
	path = filepath.Clean(path)
	d.mu.Lock()
	defer d.mu.Unlock()
	current := effectivePaths(d.cfg, d.store.ProgramOverrides())
	if !slices.Contains(current, path) {
		return nil, fmt.Errorf("programs remove: %s is not in the program list", path)
	}
	over := store.ProgramRemoved
	if !slices.Contains(cleaned(d.cfg.Programs), path) {
		over = "" // added at run time: forgetting the addition removes it
	}
	if err := d.store.SetProgramOverride(path, over); err != nil {
		return nil, err
	}
	d.applyLocked("programs remove " + path)
	return d.programsFor(d.cfg), nil
}

func cleaned(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Clean(p)
	}
	return out
}

// applyLocked pushes settings derived from d.cfg to the manager and says
// which live leases the new rules would not grant (they are kept).
func (d *Daemon) applyLocked(why string) {
	stranded := d.mgr.SetSettings(d.settings(d.cfg))
	for _, l := range stranded {
		d.log.Warn("lease kept although the new settings would not grant it; it ends with its holder",
			"change", why, "holder", l.Holder.Key(), "vip", l.Addr.String())
	}
	d.warnProgramsLocked()
	if d.stock != nil {
		d.stock.configure(d.cfg)
	}
}

// warnProgramsLocked logs each per-program entry that cannot match (a
// script such as Debian's /usr/bin/psql, a missing file), once per entry
// and warning.
func (d *Daemon) warnProgramsLocked() {
	if d.programWarned == nil {
		d.programWarned = map[string]string{}
	}
	for _, e := range d.programsFor(d.cfg) {
		if e.Warning != "" && d.programWarned[e.Path] != e.Warning {
			d.log.Warn("programs: entry will not match", "program", e.Path, "why", e.Warning)
		}
		d.programWarned[e.Path] = e.Warning
	}
}

// interceptorState says which interceptor runs, and why not the configured
// one when the kernel refused it.
func (d *Daemon) interceptorState(cfg config.Config) string {
	switch {
	case !cfg.Interceptor.Kernel() && d.peers != nil:
		return string(cfg.Interceptor) + " (callers' sessions recorded by the kernel at connect)"
	case !cfg.Interceptor.Kernel():
		return string(cfg.Interceptor)
	case d.kernel == nil:
		return fmt.Sprintf("preload (configured %s; kernel interceptor unavailable: %v)", cfg.Interceptor, d.kernelErr)
	}
	state := string(cfg.Interceptor) + " (attached"
	if d.kernel.ic.Adopted() {
		state += "; adopted from a previous daemon"
	}
	if d.stock != nil {
		state += "; first use: " + d.stock.status()
	}
	if d.peers != nil {
		state += "; socket callers' sessions recorded by the kernel at connect"
	}
	if d.kernel.ic.SessionEvents() {
		return state + "; new sessions reported by the kernel)"
	}
	return state + "; new sessions found by the scan)"
}
