// Package api holds the JSON replies of ipvirtd's control protocol
// (STATUS, WHOAMI, SESSIONS, PROGRAMS, RELEASE, SESSION_OPEN/CLOSE) and
// the daemon's default socket. The daemon encodes these types and package client decodes them,
// so the two sides cannot drift; it imports nothing of the daemon, so a
// program that talks to ipvirtd links none of it.
package api

import "time"

// DefaultSocket is where ipvirtd listens unless its config says otherwise.
const DefaultSocket = "/run/ipvirt/ipvirt.sock"

// Status is the allocation summary inside a STATUS reply.
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
	// StoreHealthy is false while the lease store cannot commit (a full or
	// read-only disk): no new lease can be granted, callers fall back.
	StoreHealthy bool   `json:"store_healthy"`
	StoreHealth  string `json:"store_health,omitempty"`
}

// StatusReport is the STATUS reply.
type StatusReport struct {
	Status
	Version    string    `json:"version"`
	Config     string    `json:"config"`
	Started    time.Time `json:"started"`
	Adapter    string    `json:"adapter"`
	Identity   string    `json:"session_identity"`
	Programs   int       `json:"programs"`
	StateDir   string    `json:"state_dir"`
	Socket     string    `json:"socket"`
	HTTP       string    `json:"http"`
	ReloadedAt time.Time `json:"reloaded_at,omitzero"`
	// Interceptor is the running interceptor: preload, bpf or both, with
	// the reason when the configured kernel interceptor could not start.
	Interceptor string `json:"interceptor"`
	// SessionTrust is loginuid or pam; Registered counts the sessions PAM
	// registered (recorded under either setting).
	SessionTrust string `json:"session_trust"`
	Registered   int    `json:"registered_sessions"`
}

// WhoamiReport is the WHOAMI reply: who the daemon takes the caller for,
// and what a QUERY would answer.
type WhoamiReport struct {
	PID        int       `json:"pid"`
	UID        uint32    `json:"uid"`
	GID        uint32    `json:"gid"`
	Session    string    `json:"session"`
	SessionUID uint32    `json:"session_uid"`
	User       string    `json:"user"`
	Exe        string    `json:"exe"`
	Result     string    `json:"result"`
	VIP        string    `json:"vip,omitempty"`
	Prefix     int       `json:"prefix,omitempty"`
	Mask       string    `json:"mask,omitempty"`
	MachineIP  string    `json:"machine_ip"`
	Holder     string    `json:"holder,omitempty"`
	Rule       string    `json:"rule"`
	Reason     string    `json:"reason,omitempty"`
	TTLSeconds int       `json:"ttl_seconds"`
	Expiry     time.Time `json:"expiry,omitzero"`
}

// SessionReport is one row of the SESSIONS reply (`ipvirtctl sessions`): a
// live login session and what ipvirt gives it.
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
	// Registered is when PAM registered the session (`ipvirtctl session
	// open`); zero if it did not.
	Registered time.Time `json:"registered,omitzero"`
}

// RegistrationReport answers SESSION_OPEN and SESSION_CLOSE: the caller's
// audit session, as the kernel shows it, and what became of it.
type RegistrationReport struct {
	Session string `json:"session"` // a:42
	ID      uint32 `json:"id"`
	UID     uint32 `json:"uid"` // the session's login uid
	User    string `json:"user"`
	// Leader is the pid of the process that registered the session: the
	// parent of the pam_exec command, such as sshd's session process.
	Leader     int       `json:"leader,omitempty"`
	Registered time.Time `json:"registered,omitzero"`
	// Result is "registered", "already registered" (the first registration
	// is kept), "unregistered", "kept" (a close from another process than
	// the one that registered it) or "not registered" (nothing to close).
	Result string `json:"result"`
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

// ProgramEntry is one program of the effective per-program list (the
// PROGRAMS replies).
type ProgramEntry struct {
	Path string `json:"path"`
	// From is "config" (the file lists it) or "runtime" (ipvirtctl added
	// it and it is persisted in the store).
	From string `json:"from"`
	// Warning says why the entry cannot match, when it cannot: a script
	// (its processes show the interpreter), a missing file.
	Warning string `json:"warning,omitempty"`
}

// Released is one lease ended by RELEASE; the reply is a list of them.
type Released struct {
	Holder string `json:"holder"`
	VIP    string `json:"vip"`
}

// FarmLease is one VIP in use anywhere in an etcd farm (the FARM reply is a
// list of them, by address).
type FarmLease struct {
	VIP    string    `json:"vip"`
	Host   string    `json:"host"`
	HostID string    `json:"host_id"`
	Holder string    `json:"holder"`
	UID    uint32    `json:"uid"`
	Since  time.Time `json:"since"`
	// Mine is true for the VIPs of the host that answered.
	Mine bool `json:"mine"`
	// Bad says why the record could not be read; the address is taken.
	Bad string `json:"bad,omitempty"`
}
