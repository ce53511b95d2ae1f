package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
)

func TestAnswerRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		a    Answer
	}{
		{"vip", Answer{Kind: KindVIP, Prefix: 24, VIP: netip.MustParseAddr("127.77.0.10"),
			MachineIP: netip.MustParseAddr("127.0.0.1"), TTL: 300, Session: 7}},
		{"vip with expiry", Answer{Kind: KindVIP, Prefix: 16, VIP: netip.MustParseAddr("10.1.2.3"),
			TTL: 30, Expiry: 1_900_000_000, Session: 1}},
		{"mip", Answer{Kind: KindMIP, MachineIP: netip.MustParseAddr("192.0.2.1"), TTL: 60,
			Session: NoSession, Reason: "process is in no login session"}},
		{"denied", Answer{Kind: KindDenied, TTL: 5, Session: 3, Reason: "pool exhausted: on_exhausted is deny"}},
		{"utf8 reason", Answer{Kind: KindMIP, Reason: "utilisateur « admin »"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := AppendAnswer(nil, tt.a)
			if len(b) != AnswerFixedSize+len(tt.a.Reason) {
				t.Fatalf("encoded %d bytes, want %d", len(b), AnswerFixedSize+len(tt.a.Reason))
			}
			got, err := ParseAnswer(b)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.a {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tt.a)
			}
		})
	}
}

// TestSpecExample pins the byte layout to the example in PROTOCOL.md, which
// the C client is written against.
func TestSpecExample(t *testing.T) {
	query := AppendFrame(nil, OpQuery, nil)
	if got, want := hex.EncodeToString(query), "495056540101000000000000"; got != want {
		t.Errorf("query frame %s, want %s", got, want)
	}
	a := Answer{Kind: KindVIP, Prefix: 24, VIP: netip.MustParseAddr("127.77.0.10"),
		MachineIP: netip.MustParseAddr("127.0.0.1"), TTL: 300, Session: 7}
	frame := AppendFrame(nil, RespAnswer, AppendAnswer(nil, a))
	want := "495056540101000000000020" +
		"011800007f4d000a7f000001" +
		"0000012c0000000000000000" +
		"0000000700000000"
	if got := hex.EncodeToString(frame); got != want {
		t.Errorf("answer frame\n got %s\nwant %s", got, want)
	}
}

func TestParseAnswerRejects(t *testing.T) {
	good := AppendAnswer(nil, Answer{Kind: KindMIP, Reason: "abc"})
	tests := []struct {
		name string
		p    []byte
		want string
	}{
		{"empty", nil, "short"},
		{"truncated fixed part", good[:31], "short"},
		{"truncated reason", good[:len(good)-1], "reason of 3 bytes"},
		{"kind zero", append([]byte{0}, good[1:]...), "kind 0 unknown"},
		{"kind four", append([]byte{4}, good[1:]...), "kind 4 unknown"},
		{"prefix 33", append([]byte{1, 33}, good[2:]...), "prefix length 33"},
		{"vip 0.0.0.0", append([]byte{1, 24}, good[2:]...), "0.0.0.0"},
		// Read as an int64 this was a negative Unix time.
		{"expiry past int64", func() []byte {
			b := bytes.Clone(good)
			copy(b[16:24], []byte{0x80, 0, 0, 0, 0, 0, 0, 1})
			return b
		}(), "expiry 9223372036854775809 is past 2^63-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseAnswer(tt.p)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseAnswer error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestTrailingBytesIgnored(t *testing.T) {
	a := Answer{Kind: KindDenied, Reason: "no"}
	b := append(AppendAnswer(nil, a), 0xde, 0xad)
	got, err := ParseAnswer(b)
	if err != nil || got != a {
		t.Fatalf("got %+v, %v; want %+v", got, err, a)
	}
}

func TestReadFrame(t *testing.T) {
	t.Run("round trip", func(t *testing.T) {
		var buf bytes.Buffer
		if err := WriteFrame(&buf, OpProgramsAdd, []byte("/usr/bin/psql")); err != nil {
			t.Fatal(err)
		}
		f, err := ReadFrame(&buf, MaxRequestPayload)
		if err != nil {
			t.Fatal(err)
		}
		if f.Type != OpProgramsAdd || string(f.Payload) != "/usr/bin/psql" || f.Version != Version {
			t.Fatalf("got %+v", f)
		}
	})
	t.Run("bad magic", func(t *testing.T) {
		_, err := ReadFrame(strings.NewReader("GET / HTTP/1.1\r\n"), MaxRequestPayload)
		if !errors.Is(err, ErrMagic) {
			t.Fatalf("err %v, want ErrMagic", err)
		}
	})
	t.Run("other version", func(t *testing.T) {
		b := AppendHeader(nil, Header{Version: 2, Type: OpQuery})
		f, err := ReadFrame(bytes.NewReader(b), MaxRequestPayload)
		if !errors.Is(err, ErrVersion) || f.Version != 2 {
			t.Fatalf("got %+v, %v; want version 2 with ErrVersion", f, err)
		}
	})
	t.Run("too big", func(t *testing.T) {
		b := AppendHeader(nil, Header{Version: Version, Type: OpQuery, Length: MaxRequestPayload + 1})
		_, err := ReadFrame(bytes.NewReader(b), MaxRequestPayload)
		if !errors.Is(err, ErrTooBig) {
			t.Fatalf("err %v, want ErrTooBig", err)
		}
	})
	t.Run("truncated payload", func(t *testing.T) {
		b := AppendHeader(nil, Header{Version: Version, Type: OpQuery, Length: 10})
		_, err := ReadFrame(bytes.NewReader(append(b, 1, 2, 3)), MaxRequestPayload)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("err %v, want unexpected EOF", err)
		}
	})
	t.Run("truncated header", func(t *testing.T) {
		_, err := ReadFrame(bytes.NewReader([]byte("IPVT\x01")), MaxRequestPayload)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("err %v, want unexpected EOF", err)
		}
	})
}

func TestErrorPayload(t *testing.T) {
	p := AppendError(nil, CodePermissionDenied, "release: only root and administrators may release sessions")
	code, msg, err := ParseError(p)
	if err != nil || code != CodePermissionDenied || !strings.HasPrefix(msg, "release:") {
		t.Fatalf("got %d %q %v", code, msg, err)
	}
	if _, _, err := ParseError([]byte{1}); err == nil {
		t.Fatal("one-byte error payload parsed")
	}
}

// FuzzReadFrame feeds arbitrary bytes to the daemon-side frame reader and
// answer parser: neither may panic, and whatever parses must re-encode to
// the bytes it came from.
func FuzzReadFrame(f *testing.F) {
	f.Add(AppendFrame(nil, OpQuery, nil))
	f.Add(AppendFrame(nil, OpSessionOpen, []byte("user=alice service=sshd type=open_session")))
	f.Add(AppendFrame(nil, RespAnswer, AppendAnswer(nil, Answer{Kind: KindVIP, Prefix: 24,
		VIP: netip.MustParseAddr("10.0.0.5"), Reason: "x"})))
	f.Add(AppendHeader(nil, Header{Version: 9, Type: 1, Length: 1 << 31}))
	f.Add([]byte("IPVT"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := ReadFrame(bytes.NewReader(b), MaxRequestPayload)
		if err != nil {
			return
		}
		again := AppendFrame(nil, fr.Type, fr.Payload)
		// Flags are ignored on read, so compare everything but them.
		if !bytes.Equal(again[:6], b[:6]) || !bytes.Equal(again[8:], b[8:HeaderSize+len(fr.Payload)]) {
			t.Fatalf("re-encoding differs: % x vs % x", again, b)
		}
		if fr.Type == RespAnswer {
			if a, err := ParseAnswer(fr.Payload); err == nil {
				if _, err := ParseAnswer(AppendAnswer(nil, a)); err != nil {
					t.Fatalf("re-encoded answer fails to parse: %v", err)
				}
			}
		}
	})
}

// FuzzParseAnswer is what a client sees from a possibly hostile or broken
// daemon.
func FuzzParseAnswer(f *testing.F) {
	f.Add(AppendAnswer(nil, Answer{Kind: KindMIP, Reason: "admin session"}))
	f.Add(make([]byte, AnswerFixedSize))
	f.Add(AppendAnswer(nil, Answer{Kind: KindVIP, Prefix: 32, VIP: netip.MustParseAddr("10.0.0.5"), TTL: 0xffffffff,
		Expiry: 1<<63 - 1, Session: NoSession}))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAnswer(b)
		if err != nil {
			return
		}
		if a.Kind == KindVIP && !a.VIP.Is4() {
			t.Fatalf("VIP answer without IPv4 address: %+v", a)
		}
		if a.Prefix > 32 || a.Expiry < 0 || len(a.Reason) > len(b)-AnswerFixedSize {
			t.Fatalf("accepted %+v from %d bytes", a, len(b))
		}
		b2 := AppendAnswer(nil, a)
		a2, err := ParseAnswer(b2)
		if err != nil || a2 != a {
			t.Fatalf("round trip: %+v -> %+v (%v)", a, a2, err)
		}
	})
}
