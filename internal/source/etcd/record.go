package etcd

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Record is the value of one VIP key: who holds the address, on which
// host, since when. Every host writes its own and reads everyone's
// (ipvirtctl sessions --farm), so a record is untrusted input: parseRecord
// checks every field.
type Record struct {
	Host   string    `json:"host"`    // host name, for people
	HostID string    `json:"host_id"` // hex machine id: whose key this is
	Holder string    `json:"holder"`  // lease.Holder.Key()
	UID    uint32    `json:"uid"`
	Since  time.Time `json:"since"`
}

// maxRecord bounds a value: a record is a few hundred bytes.
const maxRecord = 4096

func parseRecord(b []byte) (Record, error) {
	var r Record
	if len(b) > maxRecord {
		return r, fmt.Errorf("record of %d bytes (at most %d)", len(b), maxRecord)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("record: %w", err)
	}
	switch {
	case r.HostID == "" || len(r.HostID) > 128 || strings.Trim(r.HostID, "0123456789abcdef") != "":
		return r, errors.New("record: host_id is not lower-case hex")
	case len(r.Host) > 255 || strings.ContainsAny(r.Host, "\x00\n"):
		return r, errors.New("record: bad host name")
	case r.Holder == "" || len(r.Holder) > 1024 || strings.ContainsAny(r.Holder, "\x00\n"):
		return r, errors.New("record: bad holder")
	}
	return r, nil
}

// vipKey is the key of address a under prefix.
func vipKey(prefix string, a netip.Addr) string { return prefix + "vips/" + a.String() }

// keyAddr is the address of a VIP key, if it is one.
func keyAddr(prefix, key string) (netip.Addr, bool) {
	rest, ok := strings.CutPrefix(key, prefix+"vips/")
	if !ok {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(rest)
	return a, err == nil && a.Is4()
}
