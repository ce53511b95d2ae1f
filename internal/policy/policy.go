// Package policy decides, from the configuration and who is calling,
// whether a process is virtualized and as which holder. It is a pure
// function: allocation, exhaustion and durability are the manager's.
package policy

import (
	"fmt"
	"path/filepath"

	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
)

// Rule names the rule that decided, as used in metrics labels and logs.
type Rule string

const (
	RuleVirtualize Rule = "virtualize"
	RuleDisabled   Rule = "disabled"
	RuleNoSession  Rule = "no-session"
	RuleOutOfScope Rule = "out-of-scope"
	// RuleUnregistered: under session_trust: pam, the caller's audit
	// session was not registered by PAM, so it is treated as session 0.
	RuleUnregistered Rule = "unregistered-session"
	RuleAdmin        Rule = "admin"
	RuleNotListed    Rule = "not-listed"
)

// Mode is how VIPs are handed out.
type Mode string

const (
	// PerSession: every process of a session shares one VIP.
	PerSession Mode = "per-session"
	// PerProgram: only listed programs get a VIP, one per (session, program).
	PerProgram Mode = "per-program"
)

// Settings is the part of the configuration the rules read.
type Settings struct {
	Enabled  bool
	Mode     Mode
	Programs Programs
}

// Programs is the effective per-program list, matched on the executable
// path the kernel reports for the caller (symlinks resolved).
type Programs map[string]bool

// NewPrograms builds the set from configured paths. Each path is entered as
// written and, when it is a symlink (/usr/bin/python3), as its target too:
// /proc/PID/exe always shows the target.
func NewPrograms(paths []string) Programs {
	p := Programs{}
	for _, path := range paths {
		p.Add(path)
	}
	return p
}

// Add enters one path (and its symlink target).
func (p Programs) Add(path string) {
	path = filepath.Clean(path)
	p[path] = true
	if real, err := filepath.EvalSymlinks(path); err == nil {
		p[real] = true
	}
}

// Verdict is the outcome of the rules for one caller.
type Verdict struct {
	Rule Rule
	// Holder is who would hold the VIP; set only for RuleVirtualize.
	Holder lease.Holder
	// Reason says in words why the caller is not virtualized.
	Reason string
}

// Decide applies the rules in the order of the Windows original: disabled,
// session 0 (out of scope, a session PAM did not register, no session at
// all), administrator sessions, then per-program filtering.
func Decide(s Settings, c identity.Caller, admin bool, userName string) Verdict {
	switch {
	case !s.Enabled:
		return Verdict{Rule: RuleDisabled, Reason: "IP virtualization is disabled (enabled: false)"}
	case c.OutOfScope != "":
		return Verdict{Rule: RuleOutOfScope, Reason: fmt.Sprintf("process is in cgroup %s, outside the daemon's scope", c.OutOfScope)}
	case c.Unregistered:
		return Verdict{Rule: RuleUnregistered, Reason: fmt.Sprintf("audit session %d (login uid %d) was not registered by PAM (session_trust: pam): "+
			"a forged or unregistered login session is treated as session 0", c.Login.ID, c.SessionUID)}
	case !c.Session.Valid():
		return Verdict{Rule: RuleNoSession, Reason: "process is in no login session (session 0: services are never virtualized)"}
	case admin:
		return Verdict{Rule: RuleAdmin, Reason: fmt.Sprintf("session %s belongs to administrator %s", c.Session, userName)}
	}
	h := lease.Holder{Session: c.Session}
	if s.Mode == PerProgram {
		if !s.Programs[c.Exe] {
			return Verdict{Rule: RuleNotListed, Reason: fmt.Sprintf("program %s is not in the per-program list", c.Exe)}
		}
		h.Program = c.Exe
	}
	return Verdict{Rule: RuleVirtualize, Holder: h}
}
