package check

import (
	"context"
	"net/netip"
	"strings"
	"time"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/dbserver"
	"github.com/ipvirt/ipvirt/sim/scenario/topo"
)

// Env is what a check sees of a phase.
type Env struct {
	Topology    topo.Topology
	Interceptor string // the phase's: preload, bpf or none
	Daemon      *daemonproc.Daemon
	DHCP        []DHCPServer
	// Filled in before a check's end runs:
	Clients []*ClientResult
	Report  []SessionRow // `ipvirtctl sessions -o json` at the end of the phase
	// ReportJSON is that output as ipvirtctl printed it (every field).
	ReportJSON []byte
	Server     []dbserver.Conn // what the database server saw, in order
}

// Outcome is one checked expectation.
type Outcome struct {
	OK   bool
	What string // "accepted = 1"
	Got  string // what was seen, when it differs or helps
}

// ClientResult is one client process and what it reported.
type ClientResult struct {
	Group   string // its session group
	Session string // its session's label: "alice#2"
	Key     string // the daemon's session key (a:42, p:1234); "-" in no session
	UID     uint32
	// Host is the topology host the session ran on ("session"; a farm's
	// hosts are session, session2, ...).
	Host string
	// Expect is the scenario entry the client ran for: every client the
	// entry started shares it, and is judged with the others.
	Expect      *ClientExpect
	Name        string // the program name the entry gives it ("psql")
	Program     string // the path it ran as
	Interceptor string
	Source      netip.AddrPort // invalid when it never connected
	Verdict     string         // accepted, refused, denied, bind-failed, error
	Errno       string
	Connect     time.Duration
	VIP         netip.Addr // what ipvirtctl reports for its holder
	// Stderr is what the client wrote there by the time it reported, such
	// as the preload library's one line when it could not ask the daemon.
	Stderr string
}

// machineIP is the address c leaves from when not virtualized: its own
// host's in a farm.
func machineIP(env *Env, c *ClientResult) netip.Addr {
	if f, ok := env.Topology.(topo.Farm); ok && c.Host != "" {
		return f.Addr(c.Host)
	}
	return env.Topology.MachineIP()
}

// why is the client's stderr, for a failed expectation: "" or " [...]".
func (c *ClientResult) why() string {
	if c.Stderr == "" {
		return ""
	}
	line, _, _ := strings.Cut(c.Stderr, "\n")
	return " [" + line + "]"
}

// SessionRow is the part of `ipvirtctl sessions -o json` the checks use.
type SessionRow struct {
	Session  string `json:"session"`
	User     string `json:"user"`
	State    string `json:"state"`
	VIP      string `json:"vip"`
	ClientID string `json:"client_id"`
	// Since is when the lease was granted (for DHCP: when the REQUEST the
	// server ACKed was sent).
	Since    time.Time `json:"since"`
	Programs []struct {
		Program  string `json:"program"`
		VIP      string `json:"vip"`
		State    string `json:"state"`
		ClientID string `json:"client_id"`
	} `json:"programs"`
}

// DHCPServer is one of the scenario's synthetic DHCP servers, running.
type DHCPServer interface {
	Name() string
	// Counters asks the server for its counters now (sim/dhcpserver's, by
	// their JSON names) and the number of leases it holds.
	Counters(ctx context.Context) (counters map[string]int, leases int, err error)
}
