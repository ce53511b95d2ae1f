package ctl

import (
	"bytes"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUsage checks the exit statuses and messages that need no daemon.
func TestUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Usage: ipvirtctl"},
		{[]string{"--help"}, 0, "Commands:"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"whoami", "extra"}, 2, "whoami takes 0 argument(s)"},
		{[]string{"release"}, 2, "release takes 1 argument(s) (SESSION)"},
		{[]string{"-o", "yaml", "status"}, 2, `-o "yaml": want table or json`},
		{[]string{"programs"}, 2, "programs needs list, add PATH or remove PATH"},
		{[]string{"programs", "frob"}, 2, `unknown subcommand "frob"`},
		{[]string{"programs", "--help"}, 0, "ipvirtctl programs list|add PATH|remove PATH"},
		{[]string{"sessions", "--help"}, 0, "Root and administrators see every session"},
		{[]string{"run"}, 2, "run needs a command"},
		{[]string{"--socket", "/nonexistent/ipvirt.sock", "status"}, 1, "cannot reach ipvirtd at /nonexistent/ipvirt.sock"},
		{[]string{"session"}, 2, "session needs open or close"},
		{[]string{"session", "frob"}, 2, `unknown subcommand "frob" (want open or close)`},
		{[]string{"session", "--help"}, 0, "pam_exec.so quiet type=open_session /usr/bin/ipvirtctl session open"},
		{[]string{"session", "close", "--help"}, 0, "only the leader's close unregisters it"},
		{[]string{"session", "open", "42"}, 2, "session open takes no arguments"},
		// A daemon that is not running must not fail a login: exit 0, one
		// line on stderr.
		{[]string{"--socket", "/nonexistent/ipvirt.sock", "session", "open"}, 0, "session open: not registered with ipvirtd: cannot reach ipvirtd at /nonexistent/ipvirt.sock"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errw bytes.Buffer
			code := Main(tt.args, &out, &errw)
			if code != tt.code || !strings.Contains(out.String()+errw.String(), tt.want) {
				t.Fatalf("exit %d (want %d), output:\n%s%s\nwant %q", code, tt.code, out.String(), errw.String(), tt.want)
			}
		})
	}
}

// --timeout holds whether it comes before the command or after it: the
// command's own flag set registers the global flags again, and used to reset
// a --timeout given before the command to 5 s (a test asking for 60 s
// through a busy daemon gave up after 5).
func TestTimeoutFlag(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "silent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accepts and never answers
		}
	}()
	for _, args := range [][]string{
		{"--socket", sock, "--timeout", "300ms", "whoami"},
		{"--socket", sock, "whoami", "--timeout", "300ms"},
	} {
		start := time.Now()
		var out, errw bytes.Buffer
		if code := Main(args, &out, &errw); code != 1 || !strings.Contains(errw.String(), "i/o timeout") {
			t.Fatalf("%v: exit %d, stderr %q", args, code, errw.String())
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("%v: gave up after %s, want about 300ms (the 5 s default was used)", args, took)
		}
	}
}
