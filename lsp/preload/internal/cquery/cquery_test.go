//go:build cgo

package cquery

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/ipvirt/ipvirt/backend/wire"
)

// answerMax is query.c's ANSWER_MAX: the fixed part, the longest reason and
// room for fields of later versions.
const answerMax = wire.AnswerFixedSize + 65535 + 4096

// header is what ipv_parse_header must make of a header, by PROTOCOL.md.
func header(b []byte) (kind int, n uint32) {
	h, err := wire.ParseHeader(b)
	if err != nil || h.Version != wire.Version {
		return HeaderBad, 0
	}
	switch {
	case h.Type == wire.RespError:
		return HeaderError, h.Length
	case h.Type == wire.RespPending && h.Length == 4:
		return HeaderPending, h.Length
	case h.Type == wire.RespAnswer && h.Length >= wire.AnswerFixedSize && h.Length <= answerMax:
		return HeaderAnswer, h.Length
	}
	return HeaderBad, 0
}

func unicast(a [4]byte) bool { return a[0]>>4 < 14 }

func TestParseHeader(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    []byte
		kind int
		msg  string
	}{
		{"answer", wire.AppendHeader(nil, wire.Header{Version: 1, Type: wire.RespAnswer, Length: 40}), HeaderAnswer, ""},
		{"error", wire.AppendHeader(nil, wire.Header{Version: 1, Type: wire.RespError, Length: 9}), HeaderError, ""},
		{"pending", wire.AppendHeader(nil, wire.Header{Version: 1, Type: wire.RespPending, Length: 4}), HeaderPending, ""},
		{"pending of 5 bytes", wire.AppendHeader(nil, wire.Header{Version: 1, Type: wire.RespPending, Length: 5}), HeaderBad, "PENDING payload of 5 bytes"},
		{"magic", []byte("GET / HTTP/1"), HeaderBad, "bad magic"},
		{"version", wire.AppendHeader(nil, wire.Header{Version: 2, Type: wire.RespAnswer, Length: 32}), HeaderBad, "version 2"},
		{"json", wire.AppendHeader(nil, wire.Header{Version: 1, Type: wire.RespJSON, Length: 32}), HeaderBad, "frame type 2"},
		{"short answer", wire.AppendHeader(nil, wire.Header{Version: 1, Type: wire.RespAnswer, Length: 31}), HeaderBad, "ANSWER payload of 31 bytes"},
		{"huge answer", wire.AppendHeader(nil, wire.Header{Version: 1, Type: wire.RespAnswer, Length: 0xffffffff}), HeaderBad, "ANSWER payload of 4294967295 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kind, _, msg := ParseHeader([12]byte(tc.h))
			if kind != tc.kind || !strings.Contains(msg, tc.msg) {
				t.Fatalf("kind %d %q, want %d %q", kind, msg, tc.kind, tc.msg)
			}
		})
	}
}

func TestParseAnswer(t *testing.T) {
	vip := wire.AppendAnswer(nil, wire.Answer{Kind: wire.KindVIP, Prefix: 24, VIP: netip.MustParseAddr("127.77.0.10"),
		MachineIP: netip.MustParseAddr("127.0.0.1"), TTL: 300, Session: 7})
	denied := wire.AppendAnswer(nil, wire.Answer{Kind: wire.KindDenied, Reason: "pool exhausted"})
	for _, tc := range []struct {
		name string
		p    []byte
		plen uint32
		ok   bool
		msg  string
	}{
		{"vip (PROTOCOL.md's example)", vip, uint32(len(vip)), true, ""},
		{"denied with reason", denied, uint32(len(denied)), true, ""},
		{"reason overruns", denied, uint32(len(denied)) - 1, false, "reason of 14 bytes overruns"},
		// ipv_parse_answer used to trust its caller for the length:
		// payload_len - 32 wrapped around and any reason fitted.
		{"payload shorter than the fixed part", denied, 20, false, "ANSWER payload of 20 bytes (want at least 32)"},
		{"empty payload", denied, 0, false, "ANSWER payload of 0 bytes"},
		{"kind 0", append([]byte{0}, vip[1:]...), 32, false, "kind 0 unknown"},
		{"prefix 33", append([]byte{1, 33}, vip[2:]...), 32, false, "prefix length 33"},
		{"vip on a denial", append([]byte{3, 0}, vip[2:]...), 32, false, "VIP set on an answer that is not a VIP"},
		{"expiry past 2^63-1", append(append(bytes.Clone(vip[:16]), 0x80, 0, 0, 0, 0, 0, 0, 1), vip[24:]...), 32, false, "expiry past 2^63-1"},
		{"multicast vip", append(append([]byte{1, 24, 0, 0}, 224, 0, 0, 1), vip[8:]...), 32, false, "VIP 224.0.0.1 is not a unicast"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fixed [32]byte
			copy(fixed[:], tc.p)
			r, ok, msg := ParseAnswer(fixed, tc.plen)
			if ok != tc.ok || !strings.Contains(msg, tc.msg) {
				t.Fatalf("ok %v %q (%+v), want %v %q", ok, msg, r, tc.ok, tc.msg)
			}
		})
	}
}

// FuzzQuery runs the preload library's parser on what a broken or hostile
// daemon may send, against backend/wire and PROTOCOL.md: the header is
// classified as the protocol says; an ANSWER the library accepts is one
// the Go codec accepts with the same fields; whatever it refuses beyond
// the Go codec is a documented extra rule; and no accepted reason runs
// past the payload, whatever length the caller passes.
func FuzzQuery(f *testing.F) {
	vip := wire.AppendFrame(nil, wire.RespAnswer, wire.AppendAnswer(nil, wire.Answer{Kind: wire.KindVIP, Prefix: 24,
		VIP: netip.MustParseAddr("127.77.0.10"), MachineIP: netip.MustParseAddr("127.0.0.1"), TTL: 300, Session: 7}))
	f.Add(vip, uint32(32))
	f.Add(wire.AppendFrame(nil, wire.RespAnswer, wire.AppendAnswer(nil, wire.Answer{Kind: wire.KindMIP, Reason: "admin"})), uint32(37))
	f.Add(wire.AppendFrame(nil, wire.RespAnswer, wire.AppendAnswer(nil, wire.Answer{Kind: wire.KindDenied, Reason: "pool exhausted"})), uint32(20))
	f.Add(wire.AppendFrame(nil, wire.RespPending, binary.BigEndian.AppendUint32(nil, 5000)), uint32(4))
	f.Add(wire.AppendFrame(nil, wire.RespError, wire.AppendError(nil, wire.CodeBadRequest, "no")), uint32(0))
	f.Fuzz(func(t *testing.T, frame []byte, plen uint32) {
		if len(frame) < wire.HeaderSize {
			return
		}
		kind, n, msg := ParseHeader([12]byte(frame))
		wantKind, wantN := header(frame)
		if kind != wantKind || (kind != HeaderBad && n != wantN) {
			t.Fatalf("header % x: kind %d length %d (%q), want %d %d", frame[:12], kind, n, msg, wantKind, wantN)
		}
		if kind == HeaderBad && msg == "" {
			t.Fatalf("header % x refused without a message", frame[:12])
		}

		var fixed [32]byte
		copy(fixed[:], frame[wire.HeaderSize:])
		reasonLen := uint32(binary.BigEndian.Uint16(fixed[2:4]))
		// Any length, as if a caller skipped the header check.
		if _, ok, _ := ParseAnswer(fixed, plen); ok && (plen < wire.AnswerFixedSize || reasonLen > plen-wire.AnswerFixedSize) {
			t.Fatalf("accepted a %d-byte reason in a %d-byte payload", reasonLen, plen)
		}

		payload := frame[wire.HeaderSize:]
		if kind != HeaderAnswer || uint32(len(payload)) < n {
			return
		}
		payload = payload[:n]
		r, ok, msg := ParseAnswer(fixed, n)
		a, err := wire.ParseAnswer(payload)
		if ok {
			if err != nil {
				t.Fatalf("the library accepts %+v, backend/wire refuses: %v", r, err)
			}
			var vipB, mipB [4]byte
			if a.Kind == wire.KindVIP {
				vipB = a.VIP.As4()
			}
			if a.MachineIP.IsValid() {
				mipB = a.MachineIP.As4()
			}
			if r.Kind != int(a.Kind) || r.Prefix != uint(a.Prefix) || r.VIP != vipB || r.MIP != mipB || r.TTL != a.TTL {
				t.Fatalf("the library reads %+v, backend/wire %+v", r, a)
			}
			return
		}
		if msg == "" {
			t.Fatal("ANSWER refused without a message")
		}
		if err != nil {
			return
		}
		// Refused by the library alone: one of its extra rules.
		v, m := [4]byte(payload[4:8]), [4]byte(payload[8:12])
		extra := (a.Kind != wire.KindVIP && (a.Prefix != 0 || v != [4]byte{})) ||
			(a.Kind == wire.KindVIP && !unicast(v)) || (m != [4]byte{} && !unicast(m))
		if !extra {
			t.Fatalf("the library refuses %x (%s), backend/wire accepts %+v", payload, msg, a)
		}
		if !bytes.Equal(payload[:32], fixed[:]) {
			t.Fatal("harness: fixed part differs from the payload")
		}
	})
}
