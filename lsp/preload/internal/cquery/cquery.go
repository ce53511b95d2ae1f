//go:build cgo

package cquery

/*
#cgo CFLAGS: -std=gnu11 -Wall -Wextra -Werror
#cgo LDFLAGS: -lpthread
#include "ipvirt.h"
*/
import "C"

import "unsafe"

// Header kinds ipv_parse_header returns.
const (
	HeaderBad     = -1
	HeaderAnswer  = 0
	HeaderError   = 1
	HeaderPending = 2
)

// ParseHeader runs ipv_parse_header on a frame header. It returns the kind
// (HeaderBad with the library's message in msg), and the payload length
// the library took from it.
func ParseHeader(h [12]byte) (kind int, payloadLen uint32, msg string) {
	var errbuf [200]C.char
	var n C.uint32_t
	k := C.ipv_parse_header((*C.uchar)(unsafe.Pointer(&h[0])), &n, &errbuf[0], C.size_t(len(errbuf)))
	return int(k), uint32(n), C.GoString(&errbuf[0])
}

// Reply is the decoded fixed part of an ANSWER, as the library keeps it.
type Reply struct {
	Kind     int
	Prefix   uint
	VIP, MIP [4]byte // network order
	TTL      uint32
}

// ParseAnswer runs ipv_parse_answer on the fixed 32 bytes of an ANSWER
// whose header announced payloadLen bytes. ok is false when the library
// refuses it, with its message.
func ParseAnswer(fixed [32]byte, payloadLen uint32) (r Reply, ok bool, msg string) {
	var errbuf [200]C.char
	var out C.struct_ipv_reply
	rc := C.ipv_parse_answer((*C.uchar)(unsafe.Pointer(&fixed[0])), C.uint32_t(payloadLen), &out, &errbuf[0], C.size_t(len(errbuf)))
	if rc != 0 {
		return Reply{}, false, C.GoString(&errbuf[0])
	}
	r = Reply{Kind: int(out.kind), Prefix: uint(out.prefix), TTL: uint32(out.ttl)}
	*(*C.in_addr_t)(unsafe.Pointer(&r.VIP)) = out.vip
	*(*C.in_addr_t)(unsafe.Pointer(&r.MIP)) = out.mip
	return r, true, ""
}
