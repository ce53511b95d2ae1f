package server

import (
	"testing"

	"github.com/ipvirt/ipvirt/internal/lease"
)

// TestParseSessionArg: what `ipvirtctl release` accepts. A stock place
// ("s:3") is no session: releasing it would free an address the kernel may
// still hand out.
func TestParseSessionArg(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want lease.Session
		ok   bool
	}{
		{"42", lease.Session{Kind: lease.KindAudit, ID: 42}, true},
		{" a:42 ", lease.Session{Kind: lease.KindAudit, ID: 42}, true},
		{"p:1234", lease.Session{Kind: lease.KindPOSIX, ID: 1234}, true},
		{"s:3", lease.Session{}, false},
		{"none", lease.Session{}, false},
		{"x:1", lease.Session{}, false},
		{"", lease.Session{}, false},
	} {
		got, err := ParseSessionArg(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseSessionArg(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}
