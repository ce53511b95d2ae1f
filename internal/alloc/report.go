package alloc

import (
	"cmp"
	"encoding/hex"
	"slices"
	"time"

	"github.com/ipvirt/ipvirt/backend/api"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/internal/source"
)

// Sessions reports every live session, and sessions in their grace period.
// When only is non-nil, the report is restricted to sessions of that user
// (what a non-administrator may see).
func (m *Manager) Sessions(only *uint32, logindDir string) []api.SessionReport {
	s := m.settings.Load()
	m.mu.RLock()
	rows := map[lease.Session]*api.SessionReport{}
	row := func(sess lease.Session, uid uint32) *api.SessionReport {
		r := rows[sess]
		if r == nil {
			r = &api.SessionReport{Session: sess.String(), ID: sess.ID, Kind: sess.Kind.String(), UID: uid,
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
		if h.Session.Stock() {
			continue // not a session: status counts the stock
		}
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
			r.Programs = append(r.Programs, api.ProgramReport{Program: h.Program, VIP: vip, State: state, ClientID: clientID, Since: since})
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
			r.Programs = append(r.Programs, api.ProgramReport{Program: h.Program, State: state, Reason: o.reason, Since: o.at})
		} else if r.VIP == "" {
			r.State, r.Reason = state, o.reason
		}
	}
	m.mu.RUnlock()

	out := make([]api.SessionReport, 0, len(rows))
	for _, r := range rows {
		if only != nil && r.UID != *only {
			continue
		}
		r.User = m.opts.Users.Name(r.UID)
		switch {
		case !s.Policy.Enabled && r.VIP == "":
			r.State, r.Reason = "mip", "IP virtualization is disabled"
		case m.isAdmin(r.UID, s.Admins) && r.VIP == "" && len(r.Programs) == 0:
			r.State, r.Reason = "mip", "administrator session"
		case s.Policy.Mode == policy.PerProgram && r.VIP == "":
			r.State = "per-program"
		}
		if r.Kind == "audit" && logindDir != "" {
			if ls, ok := identity.ReadLogind(logindDir, r.ID); ok {
				r.RemoteHost, r.Type = ls.RemoteHost, ls.Type
			}
		}
		slices.SortFunc(r.Programs, func(a, b api.ProgramReport) int { return cmp.Compare(a.Program, b.Program) })
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b api.SessionReport) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// Status summarises the manager's state.
func (m *Manager) Status() api.Status {
	s := m.settings.Load()
	st := m.opts.Source.Stats()
	out := api.Status{Enabled: s.Policy.Enabled, Mode: string(s.Policy.Mode), Source: m.opts.Source.Name(),
		PoolSize: st.Size, Healthy: st.Healthy, Health: st.Health, MachineIP: m.opts.MIP.String(),
		OnExhausted: string(s.OnExhausted), DuplicateVIP: m.DuplicateVIPs()}
	out.StoreHealthy = true
	if m.opts.Store != nil {
		if err := m.opts.Store.Healthy(); err != nil {
			out.StoreHealthy, out.StoreHealth = false, err.Error()
		}
	}
	m.mu.RLock()
	for h, e := range m.holders {
		if h.Session.Stock() {
			continue
		}
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
