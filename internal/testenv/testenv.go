// Package testenv holds what tests across the module need to know about the
// machine they run on.
package testenv

import (
	"os"
	"testing"
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
