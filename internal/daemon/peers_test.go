package daemon_test

import (
	"strings"
	"testing"

	"github.com/ipvirt/ipvirt/internal/testenv"
)

// As root the daemon has the kernel note its callers' sessions at connect
// (bpf.PeerRecords), says so, and identifies callers by the records: a
// session's processes get its VIP, another session's get another.
func TestCallersIdentifiedByTheKernelRecord(t *testing.T) {
	testenv.RequireRoot(t)
	for i, extra := range []string{"", "interceptor: both\n"} {
		e := newEnv(t, extra)
		if st := e.status(); !strings.Contains(st.Interceptor, "recorded by the kernel") {
			t.Fatalf("%q: status interceptor %q: callers not identified from the kernel's records\nlog:\n%s", extra, st.Interceptor, e.d.Logs())
		}
		a, b := e.session(uint32(60721+2*i)), e.session(uint32(60722+2*i))
		va, vb := e.mustVIP(a), e.mustVIP(b)
		if va == vb {
			t.Fatalf("%q: two sessions got one VIP, %s", extra, va)
		}
		if again := e.mustVIP(a); again != va {
			t.Fatalf("%q: session %d: %s, then %s", extra, a.ID, va, again)
		}
	}
}
