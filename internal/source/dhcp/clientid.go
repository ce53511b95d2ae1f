package dhcp

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"net"
)

// ClientID is the DHCP client identifier (option 61) of one holder.
//
// ipvirt uses the RFC 4361 form (type 255): 0xff, a 4-byte IAID, then a
// DUID. Each holder is a DHCP client of its own, so each gets its own DUID:
// a DUID-UUID (RFC 6355, DUID type 4) whose UUID is the first 16 bytes of
// SHA-256("ipvirt-dhcp-clientid/1", hostID, holderKey), with RFC 9562
// version 8 (custom) and variant bits set. The IAID is the next 4 bytes.
//
// Why not one host DUID with a per-holder IAID: the IAID has 32 bits, and
// a hash of 1,000 holder keys into 32 bits collides with probability 1e-4
// per host; two holders with one client id would share one address. 128
// bits do not collide. Why not type 0 (opaque): servers display and match
// RFC 4361 ids as DUIDs (Kea, dnsmasq logs), which makes ipvirt's leases
// recognisable and lets admins reserve by DUID.
//
// The id depends only on hostID and the holder key, so a restarted daemon
// (or a session that logs in again with the same key) asks for the same
// lease and the server hands back the same address while it remembers it.
// A lease transferred to another holder (Source.Transfer) keeps the id it
// was obtained with, which Source.ClientID then reports for its holder.
func ClientID(hostID []byte, holderKey string) []byte {
	h := sha256.New()
	h.Write([]byte("ipvirt-dhcp-clientid/1\x00"))
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(hostID)))
	h.Write(n[:])
	h.Write(hostID)
	h.Write([]byte(holderKey))
	sum := h.Sum(nil)

	id := make([]byte, 0, 1+4+2+16)
	id = append(id, 0xff)          // RFC 4361 type
	id = append(id, sum[16:20]...) // IAID
	id = append(id, 0x00, 0x04)    // DUID-UUID
	uuid := sum[:16]
	uuid[6] = uuid[6]&0x0f | 0x80 // version 8
	uuid[8] = uuid[8]&0x3f | 0x80 // variant 10
	return append(id, uuid...)
}

// StockClientID is the client identifier of one acquisition by a stock
// holder (lease.KindStock, "s:N"): ClientID of the host id and the holder
// key with a random nonce, a new one each time. Stock places are reused:
// once the kernel has handed a stock lease to a session, the lease lives
// on under the id it was obtained with (Transfer) and the place acquires
// again. Under the id derived from its key alone the server would take the
// refill for the client that holds the session's lease and offer the
// session's own address, and the DECLINE of it would end the session's
// lease at the server. The id is kept in the lease's State like any other,
// so Adopt resumes the lease under it after a restart.
func StockClientID(hostID []byte, holderKey string) []byte {
	var nonce [16]byte
	rand.Read(nonce[:])
	return ClientID(hostID, holderKey+"/"+hex.EncodeToString(nonce[:]))
}

// fallbackMAC is a stable, locally administered, unicast MAC for adapters
// without one, so that chaddr is never all zeros (some servers reject that).
func fallbackMAC(hostID []byte) net.HardwareAddr {
	sum := sha256.Sum256(append([]byte("ipvirt-dhcp-chaddr/1\x00"), hostID...))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&0xfc | 0x02
	return mac
}
