package alloc

import (
	"cmp"
	"encoding/hex"
	"slices"
	"time"

	"github.com/ipvirt/ipvirt/backend/config"
	"github.com/ipvirt/ipvirt/backend/identity"
	"github.com/ipvirt/ipvirt/backend/lease"
	"github.com/ipvirt/ipvirt/backend/source"
	"github.com/ipvirt/ipvirt/backend/wire"
)

// SessionReport is one row of `ipvirtctl sessions`: a live login session and
// what ipvirt gives it.
type SessionReport struct {
	Session string `json:"session"` // text form: a:42, p:1234
	ID      uint32 `json:"id"`
	Kind    string `json:"kind"` // audit | posix
	UID     uint32 `json:"uid"`
	User    string `json:"user"`
	Mode    string `json:"mode"`
	// State is the session's address in per-session mode: vip, mip,
	// denied, pending (being acquired) or none (nothing asked yet). In
	// per-program mode it is "per-program" and Programs says the rest.
	State  string `json:"state"`
	VIP    string `json:"vip,omitempty"`
	Reason string `json:"reason,omitempty"`
	// ClientID is the DHCP client identifier (option 61, hex) the session's
	// lease is held under; DHCP source only.
	ClientID string          `json:"client_id,omitempty"`
	Programs []ProgramReport `json:"programs,omitempty"`
	// Since is when the session got its VIP, or when ipvirt first saw it.
	Since      time.Time `json:"since"`
	Expiry     time.Time `json:"expiry,omitzero"`
	Processes  int       `json:"processes"`
	RemoteHost string    `json:"remote_host,omitempty"`
	Type       string    `json:"type,omitempty"`
	Ending     bool      `json:"ending,omitempty"` // gone, in its grace period
}

// ProgramReport is one per-program VIP of a session.
type ProgramReport struct {
	Program  string    `json:"program"`
	VIP      string    `json:"vip,omitempty"`
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	ClientID string    `json:"client_id,omitempty"`
	Since    time.Time `json:"since"`
}

// Sessions reports every live session, and sessions in their grace period.
// When only is non-nil, the report is restricted to sessions of that user
// (what a non-administrator may see).
func (m *Manager) Sessions(only *uint32, logindDir string) []SessionReport {
	s := m.settings.Load()
	m.mu.RLock()
	rows := map[lease.Session]*SessionReport{}
	row := func(sess lease.Session, uid uint32) *SessionReport {
		r := rows[sess]
		if r == nil {
			r = &SessionReport{Session: sess.String(), ID: sess.ID, Kind: sess.Kind.String(), UID: uid,
				Mode: string(s.Policy.Mode), State: "none", Since: m.seen[sess]}
			rows[sess] = r
		}
		return r
	}
	for sess, info := range m.snap.Sessions {
		r := row(sess, info.UID)
		r.Processes = info.Procs
	}
	for h, e := range m.holders {
		var uid uint32
		if e.done() && e.err == nil {
			uid = e.lease.UID
		}
		r := row(h.Session, uid)
		if _, live := m.snap.Sessions[h.Session]; !live {
			r.Ending = true
		}
		state, vip, since := "pending", "", time.Time{}
		if e.done() && e.err == nil {
			state, vip, since = "vip", e.lease.Addr.String(), e.lease.Granted
		}
		var clientID string
		if cid, ok := m.opts.Source.(source.ClientIDer); ok {
			clientID = hex.EncodeToString(cid.ClientID(h))
		}
		if h.PerProgram() {
			r.Programs = append(r.Programs, ProgramReport{Program: h.Program, VIP: vip, State: state, ClientID: clientID, Since: since})
			continue
		}
		r.State, r.VIP, r.ClientID = state, vip, clientID
		if !since.IsZero() {
			r.Since, r.Expiry = since, e.lease.Expiry
		}
	}
	for h, o := range m.outcomes {
		r, ok := rows[h.Session]
		if !ok {
			continue
		}
		state := "mip"
		if o.kind == wire.KindDenied {
			state = "denied"
		}
		if h.PerProgram() {
			r.Programs = append(r.Programs, ProgramReport{Program: h.Program, State: state, Reason: o.reason, Since: o.at})
		} else if r.VIP == "" {
			r.State, r.Reason = state, o.reason
		}
	}
	m.mu.RUnlock()

	out := make([]SessionReport, 0, len(rows))
	for _, r := range rows {
		if only != nil && r.UID != *only {
			continue
		}
		r.User = m.opts.Users.Name(r.UID)
		switch {
		case !s.Policy.Enabled && r.VIP == "":
			r.State, r.Reason = "mip", "IP virtualization is disabled"
		case m.opts.Users.IsAdmin(r.UID, s.Admins) && r.VIP == "" && len(r.Programs) == 0:
			r.State, r.Reason = "mip", "administrator session"
		case s.Policy.Mode == config.PerProgram && r.VIP == "":
			r.State = "per-program"
		}
		if r.Kind == "audit" && logindDir != "" {
			if ls, ok := identity.ReadLogind(logindDir, r.ID); ok {
				r.RemoteHost, r.Type = ls.RemoteHost, ls.Type
			}
		}
		slices.SortFunc(r.Programs, func(a, b ProgramReport) int { return cmp.Compare(a.Program, b.Program) })
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b SessionReport) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// Status is the daemon's summary for `ipvirtctl status`.
type Status struct {
	Enabled      bool   `json:"enabled"`
	Mode         string `json:"mode"`
	Source       string `json:"source"`
	PoolSize     int    `json:"pool_size"` // -1: unknown (DHCP)
	PoolFree     int    `json:"pool_free"` // -1: unknown
	Leases       int    `json:"leases"`
	Pending      int    `json:"pending"`
	Sessions     int    `json:"sessions"`
	Healthy      bool   `json:"source_healthy"`
	Health       string `json:"source_health"`
	MachineIP    string `json:"machine_ip"`
	OnExhausted  string `json:"on_exhausted"`
	DuplicateVIP int    `json:"duplicate_vips"`
}

// Status summarises the manager's state.
func (m *Manager) Status() Status {
	s := m.settings.Load()
	st := m.opts.Source.Stats()
	out := Status{Enabled: s.Policy.Enabled, Mode: string(s.Policy.Mode), Source: m.opts.Source.Name(),
		PoolSize: st.Size, Healthy: st.Healthy, Health: st.Health, MachineIP: m.opts.MIP.String(),
		OnExhausted: string(s.OnExhausted), DuplicateVIP: m.DuplicateVIPs()}
	m.mu.RLock()
	for _, e := range m.holders {
		if e.done() && e.err == nil {
			out.Leases++
		} else if !e.done() {
			out.Pending++
		}
	}
	out.Sessions = len(m.snap.Sessions)
	m.mu.RUnlock()
	out.PoolFree = -1
	if st.Size >= 0 {
		out.PoolFree = st.Size - st.Used
	}
	return out
}
