package pool

import (
	"net/netip"
	"testing"
)

func TestMaskBits(t *testing.T) {
	tests := []struct {
		mask string
		bits int
		ok   bool
	}{
		{"0.0.0.0", 0, true}, {"128.0.0.0", 1, true}, {"255.0.0.0", 8, true},
		{"255.255.255.0", 24, true}, {"255.255.255.252", 30, true}, {"255.255.255.255", 32, true},
		{"255.255.0.255", 0, false}, {"0.255.255.255", 0, false}, {"255.255.255.253", 0, false},
		{"::ffff:255.255.255.0", 0, false},
	}
	for _, tt := range tests {
		bits, ok := MaskBits(netip.MustParseAddr(tt.mask))
		if bits != tt.bits || ok != tt.ok {
			t.Errorf("MaskBits(%s) = %d, %v; want %d, %v", tt.mask, bits, ok, tt.bits, tt.ok)
		}
	}
}

func TestBroadcast(t *testing.T) {
	for pfx, want := range map[string]string{
		"10.0.0.0/24": "10.0.0.255", "10.0.0.77/16": "10.0.255.255", "127.0.0.0/8": "127.255.255.255",
		"192.0.2.1/32": "192.0.2.1", "0.0.0.0/0": "255.255.255.255",
	} {
		if got := Broadcast(netip.MustParsePrefix(pfx)); got.String() != want {
			t.Errorf("Broadcast(%s) = %s, want %s", pfx, got, want)
		}
	}
}

func TestV4RoundTrip(t *testing.T) {
	for _, s := range []string{"0.0.0.0", "10.1.2.3", "255.255.255.255", "127.0.0.1"} {
		a := netip.MustParseAddr(s)
		if got := FromV4(V4(a)); got != a {
			t.Errorf("FromV4(V4(%s)) = %s", a, got)
		}
	}
	if V4(netip.MustParseAddr("10.0.0.1")) != 0x0a000001 {
		t.Error("V4 is not host order")
	}
}
