package arp

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"testing"
)

var (
	macA = [6]byte{2, 0, 0, 0, 0, 1}
	macB = [6]byte{2, 0, 0, 0, 0, 2}
	ipA  = netip.MustParseAddr("10.0.0.9")
	ipB  = netip.MustParseAddr("10.0.0.1")
	zero = netip.IPv4Unspecified()
)

func TestRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name string
		p    Packet
		wire string // hex of the 28 bytes
	}{
		{"probe", Packet{Op: Request, SenderHW: macA, SenderIP: zero, TargetIP: ipA},
			"0001080006040001020000000001000000000000000000000a000009"},
		{"announcement", Packet{Op: Request, SenderHW: macA, SenderIP: ipA, TargetIP: ipA},
			"00010800060400010200000000010a0000090000000000000a000009"},
		{"reply", Packet{Op: Reply, SenderHW: macB, SenderIP: ipA, TargetHW: macA, TargetIP: ipB},
			"00010800060400020200000000020a0000090200000000010a000001"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.p.Marshal()
			if got := hex.EncodeToString(b); got != tt.wire {
				t.Fatalf("Marshal = %s\nwant      %s", got, tt.wire)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got != tt.p {
				t.Fatalf("Parse(Marshal(p)) = %+v, want %+v", got, tt.p)
			}
			// Ethernet pads short frames: the padding is not the packet's.
			if got, err := Parse(append(b, make([]byte, 18)...)); err != nil || got != tt.p {
				t.Fatalf("padded: %+v, %v", got, err)
			}
		})
	}
}

// Marshal sends anything that is not an IPv4 address as 0.0.0.0, so a
// Packet built without one still encodes (and parses back as 0.0.0.0).
func TestMarshalNonIPv4(t *testing.T) {
	for _, a := range []netip.Addr{{}, netip.MustParseAddr("::1"), netip.MustParseAddr("::ffff:10.0.0.9")} {
		p, err := Parse(Packet{Op: Reply, SenderIP: a, TargetIP: a}.Marshal())
		if err != nil || p.SenderIP != zero || p.TargetIP != zero {
			t.Errorf("%v: parsed back %+v, %v; want 0.0.0.0", a, p, err)
		}
	}
}

func TestParseRejects(t *testing.T) {
	good := Packet{Op: Reply, SenderHW: macB, SenderIP: ipA, TargetHW: macA, TargetIP: ipB}.Marshal()
	for _, tt := range []struct {
		name string
		edit func(b []byte) []byte
	}{
		{"empty", func(b []byte) []byte { return nil }},
		{"one byte short", func(b []byte) []byte { return b[:Len-1] }},
		{"hardware type", func(b []byte) []byte { b[1] = 6; return b }},
		{"protocol type", func(b []byte) []byte { b[2], b[3] = 0x86, 0xdd; return b }},
		{"hardware length", func(b []byte) []byte { b[4] = 8; return b }},
		{"protocol length", func(b []byte) []byte { b[5] = 16; return b }},
		{"op 0", func(b []byte) []byte { b[7] = 0; return b }},
		{"op 3 (RARP request)", func(b []byte) []byte { b[7] = 3; return b }},
		{"op 0x0101", func(b []byte) []byte { b[6], b[7] = 1, 1; return b }},
	} {
		b := tt.edit(bytes.Clone(good))
		if p, err := Parse(b); err == nil {
			t.Errorf("%s: parsed as %+v", tt.name, p)
		}
	}
}

// Readers parse into one buffer frame after frame: a Packet must not
// change when the buffer does.
func TestParseCopies(t *testing.T) {
	b := Packet{Op: Reply, SenderHW: macB, SenderIP: ipA, TargetHW: macA, TargetIP: ipB}.Marshal()
	p, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	want := p
	for i := range b {
		b[i] = 0xff
	}
	if p != want {
		t.Fatalf("packet changed with its buffer: %+v, was %+v", p, want)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Packet{Op: Request, SenderHW: macA, SenderIP: zero, TargetIP: ipA}.Marshal())
	f.Add(Packet{Op: Reply, SenderHW: macB, SenderIP: ipA, TargetHW: macA, TargetIP: ipB}.Marshal())
	f.Add(append(Packet{Op: Reply}.Marshal(), 0, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		p, err := Parse(b)
		if !bytes.Equal(b, in) {
			t.Fatal("Parse modified its input")
		}
		if err != nil {
			return
		}
		if p.Op != Request && p.Op != Reply || !p.SenderIP.Is4() || !p.TargetIP.Is4() {
			t.Fatalf("accepted %+v", p)
		}
		if out := p.Marshal(); !bytes.Equal(out, b[:Len]) {
			t.Fatalf("re-encoding differs:\n%x\n%x", out, b[:Len])
		}
		if q, err := Parse(p.Marshal()); err != nil || q != p {
			t.Fatalf("round trip: %+v, %v; want %+v", q, err, p)
		}
	})
}
