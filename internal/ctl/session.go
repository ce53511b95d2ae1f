package ctl

import (
	"fmt"
	"os"
	"strings"

	"github.com/ipvirt/ipvirt/backend/api"
)

const sessionHelp = `Registers (open) or unregisters (close) the login session this process is in,
for session_trust: pam, under which ipvirtd virtualizes only registered
sessions. Meant for pam_exec, which runs it as root from the session stack,
after pam_loginuid, as a child of the process that called PAM:

  session optional pam_exec.so quiet type=open_session /usr/bin/ipvirtctl session open
  session optional pam_exec.so quiet type=close_session /usr/bin/ipvirtctl session close

(deploy/pam-configs/ipvirt; on Debian: pam-auth-update --enable ipvirt).
The daemon reads the session (audit session id and login uid) from this
process's /proc entries, never from the request, and takes its parent as the
session's leader: only the leader's close unregisters it, so that a sudo
inside the session, which runs the session stack again, leaves it
registered. Root only (real and effective uid 0). PAM_USER, PAM_SERVICE,
PAM_TYPE, PAM_RHOST and PAM_TTY are passed on for the daemon's log, nothing
else. When the daemon cannot be reached it prints one line to standard
error and exits 0: a login never fails on ipvirt's account (pam_exec's
quiet hides the line).`

// pamNote is what the PAM environment says about the login, for the
// daemon's log only: the daemon never believes it.
func pamNote() string {
	var words []string
	for _, kv := range [][2]string{{"user", "PAM_USER"}, {"service", "PAM_SERVICE"}, {"type", "PAM_TYPE"},
		{"rhost", "PAM_RHOST"}, {"tty", "PAM_TTY"}} {
		if v := os.Getenv(kv[1]); v != "" {
			words = append(words, kv[0]+"="+v)
		}
	}
	return strings.Join(words, " ")
}

func session(g *globals, args []string) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			fmt.Fprintf(g.errw, "Usage: ipvirtctl session open|close\n\n%s\n", sessionHelp)
			return 0
		}
		return g.usageError("session needs open or close; see ipvirtctl session --help")
	}
	sub, rest := args[0], args[1:]
	if sub != "open" && sub != "close" {
		return g.usageError("session: unknown subcommand %q (want open or close)", sub)
	}
	fs, ok := g.subFlags("session "+sub, "", sessionHelp, rest)
	if !ok {
		if len(rest) > 0 && (rest[0] == "-h" || rest[0] == "--help" || rest[0] == "-help") {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		return g.usageError("session %s takes no arguments; see ipvirtctl session --help", sub)
	}
	asJSON, st := g.check()
	if st >= 0 {
		return st
	}
	c, err := g.dial()
	if err != nil {
		// A daemon that is not running must not fail the login.
		fmt.Fprintf(g.errw, "ipvirtctl: session %s: not registered with ipvirtd: %v\n", sub, err)
		return 0
	}
	defer c.Close()
	var r api.RegistrationReport
	if sub == "open" {
		r, err = c.SessionOpen(pamNote())
	} else {
		r, err = c.SessionClose(pamNote())
	}
	if err != nil {
		return g.fail(err)
	}
	if asJSON {
		return g.printJSON(r)
	}
	fmt.Fprintf(g.out, "session %s (user %s, uid %d): %s", r.Session, r.User, r.UID, r.Result)
	if r.Leader != 0 {
		fmt.Fprintf(g.out, ", leader pid %d", r.Leader)
	}
	fmt.Fprintln(g.out)
	return 0
}
