package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"hash/fnv"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A record is read from the file: its address and subnet go to the adapter,
// the kernel maps and every ANSWER, whose prefix byte a client refuses above
// 32. Records that are not an IPv4 VIP inside an IPv4 subnet used to be
// adopted all the same.
func TestRecordRangeChecks(t *testing.T) {
	good := `{"holder":"a:1","addr":"10.0.0.5","subnet":"10.0.0.0/24","source":"static","granted":"2027-01-15T08:00:00Z","uid":1001}`
	var r record
	if err := json.Unmarshal([]byte(good), &r); err != nil {
		t.Fatal(err)
	}
	if _, err := r.lease(); err != nil {
		t.Fatalf("good record: %v", err)
	}
	for _, tc := range []struct {
		name, addr, subnet, want string
	}{
		{"ipv6 address and subnet", "fd00::5", "fd00::/64", `address "fd00::5" is not an IPv4`},
		{"no address", "", "10.0.0.0/24", `address "invalid IP"`},
		{"0.0.0.0", "0.0.0.0", "0.0.0.0/0", `address "0.0.0.0"`},
		{"ipv6 subnet", "10.0.0.5", "::/0", "subnet ::/0 is not an IPv4 subnet holding 10.0.0.5"},
		{"address outside the subnet", "10.0.1.5", "10.0.0.0/24", "subnet 10.0.0.0/24 is not an IPv4 subnet holding 10.0.1.5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := record{Holder: "a:1", Addr: mustAddr(t, tc.addr), Subnet: tc.subnet, Source: "static"}
			_, err := r.lease()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("lease() error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	if s == "" {
		return netip.Addr{}
	}
	return netip.MustParseAddr(s)
}

// bboltMeta is a meta page image (page header and meta) with a good
// checksum, as precheck reads it.
func bboltMeta(pageSize uint32, root, hwm, txid uint64) []byte {
	p := make([]byte, pageSize)
	binary.LittleEndian.PutUint16(p[8:], 0x04) // meta page
	m := p[pageHeaderSize:]
	le := binary.LittleEndian
	le.PutUint32(m[0:], boltMagic)
	le.PutUint32(m[4:], boltVersion)
	le.PutUint32(m[8:], pageSize)
	le.PutUint64(m[16:], root)
	le.PutUint64(m[32:], ^uint64(0)) // no freelist
	le.PutUint64(m[40:], hwm)
	le.PutUint64(m[48:], txid)
	h := fnv.New64a()
	h.Write(m[:56])
	le.PutUint64(m[56:], h.Sum64())
	return p
}

func TestPrecheckFewPages(t *testing.T) {
	for _, hwm := range []uint64{0, 1, 2} {
		file := append(bboltMeta(4096, 2, hwm, 1), bboltMeta(4096, 2, hwm, 2)...)
		err := precheckFile(bytes.NewReader(file), int64(len(file)))
		// hwm 0 used to be reported as "page id 2 outside 2..18446744073709551615".
		if err == nil || strings.Contains(err.Error(), "18446744073709551615") || !strings.Contains(err.Error(), "at least 3") {
			t.Errorf("hwm %d: %v", hwm, err)
		}
	}
}

// Element offsets and sizes are 32-bit fields. Summed as ints they wrapped
// around where an int is 32 bits (GOARCH=386 or arm): a bucket value three
// gigabytes past the page passed the bound check and the slice panicked on
// the goroutine that opens the store. This test fails there without the
// uint64 sums: GOARCH=386 go test -run TestPrecheckElementBounds.
func TestPrecheckElementBounds(t *testing.T) {
	leaf := func(eflags, pos, ksize, vsize uint32) []byte {
		p := make([]byte, 4096)
		le := binary.LittleEndian
		le.PutUint64(p[0:], 3)
		le.PutUint16(p[8:], leafPage)
		le.PutUint16(p[10:], 1)
		e := p[pageHeaderSize:]
		le.PutUint32(e[0:], eflags)
		le.PutUint32(e[4:], pos)
		le.PutUint32(e[8:], ksize)
		le.PutUint32(e[12:], vsize)
		return p
	}
	branch := func(pos, ksize uint32) []byte {
		p := make([]byte, 4096)
		le := binary.LittleEndian
		le.PutUint64(p[0:], 3)
		le.PutUint16(p[8:], branchPage)
		le.PutUint16(p[10:], 1)
		e := p[pageHeaderSize:]
		le.PutUint32(e[0:], pos)
		le.PutUint32(e[4:], ksize)
		le.PutUint64(e[8:], 5)
		return p
	}
	for _, tc := range []struct {
		name string
		page []byte
		want string
	}{
		{"leaf sizes wrapping 32 bits", leaf(bucketLeaf, 0x40000000, 0x40000000, 0x40000000), "leaf element 0 (offset 1073741824"},
		{"leaf offset wrapping 32 bits", leaf(bucketLeaf, 0xffffffff, 0xffffffff, 2), "leaf element 0"},
		{"leaf value past the page", leaf(0, 16, 8, 4096), "value 4096 bytes) out of the 4096-byte page"},
		{"branch key wrapping 32 bits", branch(0x7fffffff, 0x7fffffff), "branch key 0 (offset 2147483647"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWalker(nil, 8*4096, metaInfo{pageSize: 4096, hwm: 8})
			err := w.page(tc.page, 3, 0)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("page() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// overlapping builds a leaf page in which the k elements of every level
// share one inline bucket, whose page does the same, as deep as the page
// allows: k^25 paths to the innermost page at k = 8.
func overlapping(k int) []byte {
	page := make([]byte, 4096)
	le := binary.LittleEndian
	le.PutUint64(page[0:], 3)
	for base := 0; ; base += 32 + 16*k {
		p := page[base:]
		le.PutUint16(p[8:], leafPage)
		if base+2*(32+16*k) > len(page) {
			return page // the innermost page: no elements
		}
		le.PutUint16(p[10:], uint16(k))
		val := 16 + 16*k // the shared value: a bucket header, then the next page
		for i := range k {
			at := 16 + 16*i
			e := p[at:]
			le.PutUint32(e[0:], bucketLeaf)
			le.PutUint32(e[4:], uint32(val-at))
			le.PutUint32(e[12:], uint32(len(p)-val))
		}
	}
}

// Damaged bucket values that overlap made the walk exponential: the page
// below took 8^25 steps, a daemon start that never ended. FuzzPrecheck
// found it as a worker that stopped making progress.
func TestPrecheckOverlappingBuckets(t *testing.T) {
	done := make(chan error, 1)
	go func() {
		w := newWalker(nil, 8*4096, metaInfo{pageSize: 4096, hwm: 8})
		done <- w.page(overlapping(8), 3, 0)
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "bucket values overlap") {
			t.Fatalf("page() = %v, want an error about overlapping values", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the walk of one 4 KiB page ran for 10s")
	}
}

func TestPrecheckOverflowOverlap(t *testing.T) {
	// Root branch page 2 with two children: page 3, whose overflow covers
	// page 4, and page 4 itself.
	const ps = 4096
	file := append(bboltMeta(ps, 2, 6, 1), bboltMeta(ps, 2, 6, 2)...)
	file = append(file, make([]byte, 4*ps)...)
	le := binary.LittleEndian
	root := file[2*ps:]
	le.PutUint64(root[0:], 2)
	le.PutUint16(root[8:], branchPage)
	le.PutUint16(root[10:], 2)
	le.PutUint64(root[16+8:], 3)
	le.PutUint64(root[32+8:], 4)
	for _, id := range []uint64{3, 4} {
		p := file[id*ps:]
		le.PutUint64(p[0:], id)
		le.PutUint16(p[8:], leafPage)
	}
	le.PutUint32(file[3*ps+12:], 1) // page 3: one overflow page, page 4
	err := precheckFile(bytes.NewReader(file), int64(len(file)))
	if err == nil || !strings.Contains(err.Error(), "page 4 referenced twice") {
		t.Fatalf("precheck = %v, want page 4 refused", err)
	}
}

// FuzzRecord: a lease record as the file holds it. Whatever decodes is a
// lease the rest of the daemon can use (an IPv4 VIP in its IPv4 subnet)
// and is written back as the same lease.
func FuzzRecord(f *testing.F) {
	for i, l := range []struct{ addr, sub string }{{"10.0.0.5", "10.0.0.0/24"}, {"127.77.0.10", "127.77.0.0/16"}} {
		ls := mkLease(uint32(i+1), l.addr)
		ls.Subnet = netip.MustParsePrefix(l.sub)
		ls.Expiry = time.Unix(1_800_000_600, 0).UTC()
		ls.State = []byte{1, 2, 3}
		b, err := json.Marshal(toRecord(ls))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"holder":"p:7|/usr/bin/psql","addr":"10.1.2.3","subnet":"10.1.0.0/16","source":"dhcp","granted":"0001-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"holder":"a:1","addr":"fd00::1","subnet":"fd00::/64"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r record
		if json.Unmarshal(b, &r) != nil {
			return
		}
		l, err := r.lease()
		if err != nil {
			return
		}
		if !l.Addr.Is4() || !l.Subnet.Addr().Is4() || !l.Subnet.Contains(l.Addr) || l.Subnet.Bits() > 32 {
			t.Fatalf("accepted lease %+v", l)
		}
		again, err := json.Marshal(toRecord(l))
		if err != nil {
			t.Fatalf("lease %+v does not encode: %v", l, err)
		}
		var r2 record
		if err := json.Unmarshal(again, &r2); err != nil {
			t.Fatalf("re-encoded record %s: %v", again, err)
		}
		l2, err := r2.lease()
		if err != nil {
			t.Fatalf("re-encoded record %s refused: %v", again, err)
		}
		if l2.Holder != l.Holder || l2.Addr != l.Addr || l2.Subnet != l.Subnet || l2.Source != l.Source ||
			!l2.Granted.Equal(l.Granted) || !l2.Expiry.Equal(l.Expiry) || l2.UID != l.UID || !bytes.Equal(l2.State, l.State) {
			t.Fatalf("round trip:\n%+v\n%+v", l, l2)
		}
	})
}

// FuzzPrecheck runs the page walk on file images in memory: much faster
// than FuzzOpen, so it goes deeper into the page format. It must never
// panic, and what it accepts must reference only pages inside the file:
// bbolt maps the file and trusts that.
func FuzzPrecheck(f *testing.F) {
	for _, n := range []int{1, 20} {
		b, err := os.ReadFile(filepath.Join(filled(&testing.T{}, n), FileName))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(append(bboltMeta(4096, 2, 3, 1), bboltMeta(4096, 2, 3, 2)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		// The fuzzer has no time limit per input: a walk that never ends
		// only shows as workers that stop. Crash the worker instead, so
		// that the input is saved.
		watchdog := time.AfterFunc(20*time.Second, func() { panic("precheck ran for 20s on one input") })
		defer watchdog.Stop()
		m, err := readMeta(bytes.NewReader(b), int64(len(b)))
		if err := precheckFile(bytes.NewReader(b), int64(len(b))); err != nil {
			return
		}
		if err != nil {
			t.Fatalf("precheck accepted a file whose meta fails: %v", err)
		}
		w := newWalker(bytes.NewReader(b), int64(len(b)), m)
		if err := w.tree(m.root, 0); err != nil {
			t.Fatalf("second walk failed: %v", err)
		}
		for id := range w.seen {
			if id < 2 || (id+1)*uint64(m.pageSize) > uint64(len(b)) {
				t.Fatalf("accepted a reference to page %d of a %d-byte file (page size %d)", id, len(b), m.pageSize)
			}
		}
	})
}
