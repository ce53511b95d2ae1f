// Package wire is the codec of the ipvirt control protocol (PROTOCOL.md):
// 12-byte framed requests and responses on a Unix socket, with a fixed
// binary ANSWER that a C client reads in one call.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"time"
)

// Version is the protocol version this package speaks.
const Version = 1

// HeaderSize is the size of a frame header.
const HeaderSize = 12

// Payload limits.
const (
	MaxRequestPayload  = 4096
	MaxResponsePayload = 16 << 20
)

var magic = [4]byte{'I', 'P', 'V', 'T'}

// Type is a frame's operation (requests) or result (responses).
type Type uint8

// Request types.
const (
	OpQuery          Type = 1
	OpWhoami         Type = 2
	OpStatus         Type = 3
	OpSessions       Type = 4
	OpProgramsList   Type = 5
	OpProgramsAdd    Type = 6
	OpProgramsRemove Type = 7
	OpRelease        Type = 8
	// OpSessionOpen and OpSessionClose register and unregister the
	// caller's own audit session (session_trust: pam); root only. The
	// payload is a free-form note for the daemon's log (the PAM user and
	// service); the session is what the kernel says the caller is in.
	OpSessionOpen  Type = 9
	OpSessionClose Type = 10
	// OpFarm lists every VIP in use on any host of an etcd farm (source:
	// etcd): all of them for root and administrators, a user's own for
	// anyone else.
	OpFarm Type = 11
)

// Response types.
const (
	RespAnswer Type = 1
	RespJSON   Type = 2
	RespError  Type = 3
	// RespPending says the answer needs an allocation that takes a while
	// (a DHCP exchange): it comes later on the same connection. Sent only
	// to a QUERY that carries FlagAcceptPending. Its 4-byte payload is the
	// longest the daemon may still take, in milliseconds.
	RespPending Type = 4
)

// FlagAcceptPending on a QUERY says the client understands RespPending:
// it can tell a daemon that is working (and wait longer) from one that is
// hung (and fail open after its short timeout). Daemons that predate it
// ignore it, as they ignore every unknown flag.
const FlagAcceptPending uint16 = 1

// FlagLast on a request says the client sends no other request on the
// connection: the daemon may close it as soon as the response is sent,
// rather than wait for the client to hang up. Daemons that predate it
// ignore it.
const FlagLast uint16 = 2

// AppendPending appends a RespPending payload announcing a wait of at most d.
func AppendPending(b []byte, d time.Duration) []byte {
	ms := d.Milliseconds()
	if ms < 0 {
		ms = 0
	}
	if ms > math.MaxUint32 {
		ms = math.MaxUint32
	}
	return binary.BigEndian.AppendUint32(b, uint32(ms))
}

// Error codes carried by RespError frames.
const (
	CodeBadRequest         uint16 = 1
	CodeUnsupportedVersion uint16 = 2
	CodePermissionDenied   uint16 = 3
	CodeNotFound           uint16 = 4
	CodeInternal           uint16 = 5
)

// Errors of frame decoding. They are wrapped with detail.
var (
	ErrMagic   = errors.New("wire: bad magic")
	ErrTooBig  = errors.New("wire: payload too large")
	ErrVersion = errors.New("wire: unsupported protocol version")
	ErrShort   = errors.New("wire: short payload")
)

// Header is a decoded frame header.
type Header struct {
	Version uint8
	Type    Type
	Flags   uint16
	Length  uint32
}

// AppendHeader appends the encoded header to b.
func AppendHeader(b []byte, h Header) []byte {
	b = append(b, magic[:]...)
	b = append(b, h.Version, byte(h.Type))
	b = binary.BigEndian.AppendUint16(b, h.Flags)
	return binary.BigEndian.AppendUint32(b, h.Length)
}

// ParseHeader decodes a header. It checks the magic and nothing else: the
// caller decides what to do with a version or length it does not accept.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header of %d bytes", ErrShort, len(b))
	}
	if [4]byte(b[:4]) != magic {
		return Header{}, fmt.Errorf("%w: % x", ErrMagic, b[:4])
	}
	return Header{
		Version: b[4],
		Type:    Type(b[5]),
		Flags:   binary.BigEndian.Uint16(b[6:8]),
		Length:  binary.BigEndian.Uint32(b[8:12]),
	}, nil
}

// Frame is a header's type and version with its payload.
type Frame struct {
	Version uint8
	Type    Type
	Flags   uint16
	Payload []byte
}

// ReadFrame reads one frame whose payload may be at most max bytes. A frame
// of another version is returned with ErrVersion (its payload is not read,
// since its length field may not mean what we think).
func ReadFrame(r io.Reader, max uint32) (Frame, error) {
	var hb [HeaderSize]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return Frame{}, err
	}
	h, err := ParseHeader(hb[:])
	if err != nil {
		return Frame{}, err
	}
	f := Frame{Version: h.Version, Type: h.Type, Flags: h.Flags}
	if h.Version != Version {
		return f, fmt.Errorf("%w: %d (this side speaks %d)", ErrVersion, h.Version, Version)
	}
	if h.Length > max {
		return f, fmt.Errorf("%w: %d bytes, limit %d", ErrTooBig, h.Length, max)
	}
	f.Payload = make([]byte, h.Length)
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		return f, fmt.Errorf("wire: payload: %w", err)
	}
	return f, nil
}

// AppendFrame appends a version-1 frame of type t with payload p.
func AppendFrame(b []byte, t Type, p []byte) []byte {
	b = AppendHeader(b, Header{Version: Version, Type: t, Length: uint32(len(p))})
	return append(b, p...)
}

// WriteFrame writes a version-1 frame in one Write call, so that a frame is
// never interleaved with another writer's bytes on a stream socket.
func WriteFrame(w io.Writer, t Type, p []byte) error {
	_, err := w.Write(AppendFrame(make([]byte, 0, HeaderSize+len(p)), t, p))
	return err
}

// Kind is the decision an ANSWER carries.
type Kind uint8

const (
	KindVIP    Kind = 1
	KindMIP    Kind = 2
	KindDenied Kind = 3
)

func (k Kind) String() string {
	switch k {
	case KindVIP:
		return "vip"
	case KindMIP:
		return "mip"
	case KindDenied:
		return "denied"
	default:
		return fmt.Sprintf("kind(%d)", uint8(k))
	}
}

// NoSession is the session id of a caller in no login session.
const NoSession = 0xFFFFFFFF

// AnswerFixedSize is the size of the fixed part of an ANSWER payload.
const AnswerFixedSize = 32

// Answer is the decoded ANSWER payload.
type Answer struct {
	Kind      Kind
	Prefix    uint8      // VIP subnet prefix length
	VIP       netip.Addr // valid only for KindVIP
	MachineIP netip.Addr // zero Addr if unknown
	TTL       uint32     // seconds the answer may be cached
	Expiry    int64      // Unix seconds; 0: held while the holder lives
	Session   uint32     // NoSession when the caller is in no session
	Reason    string
}

// maxReason keeps reasons within the 16-bit length field.
const maxReason = 0xFFFF

// AppendAnswer appends the encoded answer to b. Addresses that are not IPv4
// are encoded as zero; a reason longer than 65,535 bytes is truncated.
func AppendAnswer(b []byte, a Answer) []byte {
	reason := a.Reason
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	b = append(b, byte(a.Kind), a.Prefix)
	b = binary.BigEndian.AppendUint16(b, uint16(len(reason)))
	b = appendV4(b, a.VIP)
	b = appendV4(b, a.MachineIP)
	b = binary.BigEndian.AppendUint32(b, a.TTL)
	b = binary.BigEndian.AppendUint64(b, uint64(a.Expiry))
	b = binary.BigEndian.AppendUint32(b, a.Session)
	b = binary.BigEndian.AppendUint32(b, 0)
	return append(b, reason...)
}

func appendV4(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return append(b, v[:]...)
	}
	return append(b, 0, 0, 0, 0)
}

// ParseAnswer decodes an ANSWER payload. Trailing bytes after the reason are
// ignored (later versions may append fields).
func ParseAnswer(p []byte) (Answer, error) {
	if len(p) < AnswerFixedSize {
		return Answer{}, fmt.Errorf("%w: answer of %d bytes, need %d", ErrShort, len(p), AnswerFixedSize)
	}
	a := Answer{
		Kind:    Kind(p[0]),
		Prefix:  p[1],
		TTL:     binary.BigEndian.Uint32(p[12:16]),
		Expiry:  int64(binary.BigEndian.Uint64(p[16:24])),
		Session: binary.BigEndian.Uint32(p[24:28]),
	}
	switch a.Kind {
	case KindVIP, KindMIP, KindDenied:
	default:
		return Answer{}, fmt.Errorf("wire: answer kind %d unknown", p[0])
	}
	if a.Prefix > 32 {
		return Answer{}, fmt.Errorf("wire: answer prefix length %d > 32", a.Prefix)
	}
	// Unix seconds in 64 bits: past 2^63-1 the int64 would be negative,
	// before 1970, and time.Unix of it nonsense.
	if e := binary.BigEndian.Uint64(p[16:24]); e > math.MaxInt64 {
		return Answer{}, fmt.Errorf("wire: answer expiry %d is past 2^63-1 seconds", e)
	}
	n := int(binary.BigEndian.Uint16(p[2:4]))
	if len(p) < AnswerFixedSize+n {
		return Answer{}, fmt.Errorf("%w: reason of %d bytes, %d present", ErrShort, n, len(p)-AnswerFixedSize)
	}
	a.Reason = string(p[AnswerFixedSize : AnswerFixedSize+n])
	if a.Kind == KindVIP {
		a.VIP = netip.AddrFrom4([4]byte(p[4:8]))
		if a.VIP.IsUnspecified() {
			return Answer{}, fmt.Errorf("wire: VIP answer carries address 0.0.0.0")
		}
	}
	if mip := [4]byte(p[8:12]); mip != [4]byte{} {
		a.MachineIP = netip.AddrFrom4(mip)
	}
	return a, nil
}

// AppendError appends an ERROR payload.
func AppendError(b []byte, code uint16, msg string) []byte {
	b = binary.BigEndian.AppendUint16(b, code)
	return append(b, msg...)
}

// ParseError decodes an ERROR payload.
func ParseError(p []byte) (code uint16, msg string, err error) {
	if len(p) < 2 {
		return 0, "", fmt.Errorf("%w: error of %d bytes", ErrShort, len(p))
	}
	return binary.BigEndian.Uint16(p[:2]), string(p[2:]), nil
}

// RemoteError is an ERROR frame received from the daemon.
type RemoteError struct {
	Code    uint16
	Message string
}

func (e *RemoteError) Error() string { return e.Message }
