// Package testenv holds what tests across the module need to know about the
// machine they run on.
package testenv

import (
	"context"
	"os"
	"testing"

	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// RequireRoot skips t unless it runs as root. With CI=true it fails
// instead: CI runs as root, so a skip there would mean the namespace, eBPF
// and audit-session tests silently stopped running.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("needs root, runs as uid %d (CI=true: not skipping)", os.Geteuid())
	}
	t.Skipf("needs root, runs as uid %d", os.Geteuid())
}

// AuditSession opens a real audit login session of login uid uid for t,
// closed with the test.
func AuditSession(t testing.TB, uid uint32) *loginsession.Session {
	t.Helper()
	s, err := loginsession.Start(context.Background(), loginsession.Audit, uid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
