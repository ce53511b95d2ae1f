package daemon_test

import (
	"strings"
	"testing"

	"github.com/ipvirt/ipvirt/internal/testenv"
)

// As root the daemon has the kernel note its callers' sessions at connect
// (package peerid), says so, and identifies callers by the records: a
// session's processes get its VIP, another session's get another.
func TestCallersIdentifiedByTheKernelRecord(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t, "")
	if st := e.status(); !strings.Contains(st.Interceptor, "recorded by the kernel") {
		t.Fatalf("status interceptor %q: callers not identified from the kernel's records\nlog:\n%s", st.Interceptor, e.d.Logs())
	}
	a, b := e.session(60721), e.session(60722)
	va, vb := e.mustVIP(a), e.mustVIP(b)
	if va == vb {
		t.Fatalf("two sessions got one VIP, %s", va)
	}
	if again := e.mustVIP(a); again != va {
		t.Fatalf("session %d: %s, then %s", a.ID, va, again)
	}
}
