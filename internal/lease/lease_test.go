package lease

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

func TestHolderKeyRoundTrip(t *testing.T) {
	tests := []struct {
		h   Holder
		key string
	}{
		{Holder{}, "none"},
		{Holder{Session: Session{Kind: KindAudit, ID: 42}}, "a:42"},
		{Holder{Session: Session{Kind: KindAudit, ID: 4294967294}}, "a:4294967294"},
		{Holder{Session: Session{Kind: KindPOSIX, ID: 1234}}, "p:1234"},
		{Holder{Session: Session{Kind: KindAudit, ID: 7}, Program: "/usr/bin/psql"}, "a:7|/usr/bin/psql"},
		{Holder{Session: Session{Kind: KindPOSIX, ID: 9}, Program: "/opt/odd|name"}, "p:9|/opt/odd|name"},
	}
	for _, tt := range tests {
		if got := tt.h.Key(); got != tt.key {
			t.Errorf("Key(%+v) = %q, want %q", tt.h, got, tt.key)
		}
		back, err := ParseHolder(tt.key)
		if err != nil || back != tt.h {
			t.Errorf("ParseHolder(%q) = %+v, %v; want %+v", tt.key, back, err, tt.h)
		}
	}
}

func TestParseSessionRejects(t *testing.T) {
	for _, s := range []string{"", "42", "x:1", "a:", "a:-1", "a:4294967296", "p:1@2", "a:1 "} {
		if _, err := ParseSession(s); err == nil {
			t.Errorf("ParseSession(%q) accepted", s)
		}
	}
}

func TestPrefixMask(t *testing.T) {
	for bits, want := range map[int]string{0: "0.0.0.0", 8: "255.0.0.0", 24: "255.255.255.0", 30: "255.255.255.252", 32: "255.255.255.255"} {
		if got := PrefixMask(bits); got.String() != want {
			t.Errorf("PrefixMask(%d) = %s, want %s", bits, got, want)
		}
	}
	if PrefixMask(33).IsValid() || PrefixMask(-1).IsValid() {
		t.Error("PrefixMask out of range returned an address")
	}
	l := Lease{Subnet: netip.MustParsePrefix("10.1.0.0/16")}
	if l.Mask().String() != "255.255.0.0" {
		t.Errorf("Mask() = %s", l.Mask())
	}
}

func FuzzParseHolder(f *testing.F) {
	f.Add("a:42|/usr/bin/psql")
	f.Add("p:1")
	f.Add("none")
	f.Add("a:4294967295|/opt/x|y")
	f.Add("a:4294967296")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHolder(s)
		if err != nil {
			return
		}
		// A session id is what the text says, in 32 bits: never cut.
		sess, _, _ := strings.Cut(s, "|")
		if h.Session.Valid() != (sess != "none") || (h.Session.Valid() && strconv.FormatUint(uint64(h.Session.ID), 10) != strings.TrimLeft(sess[2:], "0") && h.Session.ID != 0) {
			t.Fatalf("%q parsed as %+v", s, h)
		}
		if h2, err := ParseHolder(h.Key()); err != nil || h2 != h {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", s, h, h.Key(), h2, err)
		}
	})
}
