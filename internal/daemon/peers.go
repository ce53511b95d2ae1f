package daemon

import (
	"log/slog"
	"path/filepath"

	"github.com/ipvirt/ipvirt/internal/cgroup"
	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/lsp/bpf"
)

// openPeers has the kernel note the audit session of every process that
// connects to the socket (bpf.PeerRecords), so that a first call is
// identified without reading /proc. It is attached to scope's cgroup, the
// only processes the daemon serves; without a kernel or the privileges for
// it, callers are identified from /proc as before, and the log says why.
func openPeers(cfg config.Config, log *slog.Logger) *bpf.PeerRecords {
	if cfg.SessionIdentity != identity.Audit {
		return nil // a POSIX session is one getsid(2) away
	}
	m, err := cgroup.Mount()
	if err == nil {
		var r *bpf.PeerRecords
		dir := filepath.Join(m, filepath.Clean("/"+cfg.Scope))
		if r, err = bpf.OpenPeerRecords(dir, cfg.Socket); err == nil {
			log.Info("socket callers identified from the kernel's record of their connect", "cgroup", dir)
			return r
		}
	}
	log.Info("socket callers identified from /proc", "reason", err)
	return nil
}
