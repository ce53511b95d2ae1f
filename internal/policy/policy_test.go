package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
)

func TestDecide(t *testing.T) {
	sess := lease.Session{Kind: lease.KindAudit, ID: 12}
	psql := identity.Caller{PID: 100, Session: sess, SessionUID: 1000, Exe: "/usr/bin/psql"}
	bash := identity.Caller{PID: 101, Session: sess, SessionUID: 1000, Exe: "/usr/bin/bash"}
	daemon := identity.Caller{PID: 50, Exe: "/usr/sbin/cron"}
	// A service that wrote its own login uid, under session_trust: pam.
	forged := identity.Caller{PID: 60, Login: lease.Session{Kind: lease.KindAudit, ID: 77}, SessionUID: 4002, Unregistered: true, Exe: "/usr/bin/psql"}
	perSession := Settings{Enabled: true, Mode: PerSession}
	perProgram := Settings{Enabled: true, Mode: PerProgram, Programs: NewPrograms([]string{"/usr/bin/psql"})}

	tests := []struct {
		name   string
		s      Settings
		c      identity.Caller
		admin  bool
		rule   Rule
		holder lease.Holder
		reason string
	}{
		{"disabled", Settings{Enabled: false, Mode: PerSession}, psql, false, RuleDisabled, lease.Holder{}, "disabled"},
		{"disabled beats admin", Settings{Enabled: false}, psql, true, RuleDisabled, lease.Holder{}, "disabled"},
		{"session 0", perSession, daemon, false, RuleNoSession, lease.Holder{}, "no login session"},
		{"session 0 per-program listed", Settings{Enabled: true, Mode: PerProgram, Programs: NewPrograms([]string{"/usr/sbin/cron"})}, daemon, false, RuleNoSession, lease.Holder{}, "session 0"},
		{"unregistered", perSession, forged, false, RuleUnregistered, lease.Holder{}, "audit session 77 (login uid 4002) was not registered by PAM"},
		{"unregistered per-program listed", perProgram, forged, false, RuleUnregistered, lease.Holder{}, "session 0"},
		{"disabled beats unregistered", Settings{Enabled: false}, forged, false, RuleDisabled, lease.Holder{}, "disabled"},
		{"admin", perSession, psql, true, RuleAdmin, lease.Holder{}, "administrator alice"},
		{"admin per-program", perProgram, psql, true, RuleAdmin, lease.Holder{}, "administrator"},
		{"per-session any program", perSession, bash, false, RuleVirtualize, lease.Holder{Session: sess}, ""},
		{"per-program listed", perProgram, psql, false, RuleVirtualize, lease.Holder{Session: sess, Program: "/usr/bin/psql"}, ""},
		{"per-program unlisted", perProgram, bash, false, RuleNotListed, lease.Holder{}, "/usr/bin/bash is not in the per-program list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Decide(tt.s, tt.c, tt.admin, "alice")
			if v.Rule != tt.rule || v.Holder != tt.holder || !strings.Contains(v.Reason, tt.reason) {
				t.Fatalf("Decide = %+v; want rule %s holder %v reason ~%q", v, tt.rule, tt.holder, tt.reason)
			}
		})
	}
}

func TestProgramsFollowSymlinks(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "python3.11")
	if err := os.WriteFile(real, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "python3")
	if err := os.Symlink("python3.11", link); err != nil {
		t.Fatal(err)
	}
	p := NewPrograms([]string{link, "/nonexistent/../nonexistent/tool"})
	if !p[link] || !p[real] || !p["/nonexistent/tool"] {
		t.Fatalf("programs %v: want the link, its target and the cleaned missing path", p)
	}
}
