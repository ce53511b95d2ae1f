package census

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"
)

// TestBound: real sockets of every kind the daemon must see (TCP listener,
// TCP connection, UDP, an IPv6 socket on a v4-mapped address) are reported
// with their owner and inode, and /proc names this process as their
// holder; sockets outside the addresses asked about, and wildcard ones,
// are not reported.
func TestBound(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.66.0.5:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 66, 0, 6)}, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 66, 0, 7)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	// An AF_INET6 socket bound to ::ffff:127.66.0.8 (a dual-stack program
	// that was given an IPv4 VIP).
	fd6, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_DGRAM, 0)
	if err != nil {
		t.Skipf("no IPv6: %v", err)
	}
	defer syscall.Close(fd6)
	mapped := netip.MustParseAddr("::ffff:127.66.0.8").As16()
	if err := syscall.Bind(fd6, &syscall.SockaddrInet6{Addr: mapped}); err != nil {
		t.Fatal(err)
	}
	outside, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 66, 1, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer outside.Close()
	wild, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer wild.Close()

	d, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	socks, err := d.Bound([]netip.Prefix{netip.MustParsePrefix("127.66.0.0/24")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"127.66.0.5": false, "127.66.0.6": false, "127.66.0.7": false, "127.66.0.8": false}
	var inodes []uint64
	for _, s := range socks {
		a := s.Local.Addr().String()
		if _, ok := want[a]; !ok {
			t.Errorf("reported %v, outside the prefix or not ours", s)
			continue
		}
		want[a] = true
		if s.UID != uint32(os.Getuid()) || s.Inode == 0 {
			t.Errorf("%v: uid %d inode %d", s, s.UID, s.Inode)
		}
		if a == "127.66.0.8" && !s.IPv6 {
			t.Errorf("%v: the mapped socket is not marked IPv6", s)
		}
		inodes = append(inodes, s.Inode)
		t.Logf("%v (uid %d, inode %d)", s, s.UID, s.Inode)
	}
	for a, seen := range want {
		if !seen {
			t.Errorf("the socket on %s was not reported", a)
		}
	}
	owners, err := Owners("/proc", inodes)
	if err != nil {
		t.Fatal(err)
	}
	for _, ino := range inodes {
		if !slices.Contains(owners[ino], os.Getpid()) {
			t.Errorf("inode %d: holders %v, want this process %d", ino, owners[ino], os.Getpid())
		}
	}

	// One exact address, and a prefix list as long as a ragged pool's.
	socks, err = d.Bound([]netip.Prefix{netip.MustParsePrefix("127.66.0.7/32")}, nil)
	if err != nil || len(socks) != 1 || socks[0].Proto != UDP {
		t.Fatalf("exact lookup of 127.66.0.7: %v, %v", socks, err)
	}
	ragged := RangePrefixes(netip.MustParseAddr("127.66.0.1"), netip.MustParseAddr("127.66.0.254"))
	socks, err = d.Bound(ragged, nil)
	if err != nil || len(socks) != 5 {
		t.Fatalf("range 127.66.0.1-254 (%d prefixes): %v, %v; want the 5 sockets", len(ragged), socks, err)
	}
	// A subnet without the adapter's own address (DHCP: the subnet minus
	// the machine IP), and with two excluded.
	socks, err = d.Bound([]netip.Prefix{netip.MustParsePrefix("127.66.0.0/24")}, []netip.Prefix{netip.MustParsePrefix("127.66.0.5/32")})
	if err != nil || len(socks) != 3 || slices.ContainsFunc(socks, func(s Socket) bool { return s.Local.Addr().String() == "127.66.0.5" }) {
		t.Fatalf("127.66.0.0/24 without .5: %v, %v; want the 3 other sockets", socks, err)
	}
	socks, err = d.Bound([]netip.Prefix{netip.MustParsePrefix("127.66.0.0/24")},
		[]netip.Prefix{netip.MustParsePrefix("127.66.0.5/32"), netip.MustParsePrefix("127.66.0.6/31")})
	if err != nil || len(socks) != 1 || socks[0].Local.Addr().String() != "127.66.0.8" {
		t.Fatalf("127.66.0.0/24 without .5 and .6-.7: %v, %v; want the socket on .8", socks, err)
	}
	// The kernel itself filters (the bytecode is accepted and applied):
	// the raw dump, before the user-space check, has only .8.
	bc := filter([]netip.Prefix{netip.MustParsePrefix("127.66.0.0/16")},
		[]netip.Prefix{netip.MustParsePrefix("127.66.0.5/32"), netip.MustParsePrefix("127.66.0.6/31"), netip.MustParsePrefix("127.66.1.0/24")})
	var raw []Socket
	for _, fam := range []uint8{syscall.AF_INET, syscall.AF_INET6} {
		for _, p := range []Proto{TCP, UDP} {
			if raw, err = d.dump(raw, fam, p, bc); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(raw) != 1 || raw[0].Local.Addr().String() != "127.66.0.8" {
		t.Fatalf("the kernel's filtered dump: %v; want only the socket on .8", raw)
	}
	// Nothing bound: an empty answer, not an error.
	if socks, err := d.Bound([]netip.Prefix{netip.MustParsePrefix("127.66.9.0/24")}, nil); err != nil || len(socks) != 0 {
		t.Fatalf("empty prefix: %v, %v", socks, err)
	}
}

// TestRangePrefixes: the prefixes cover exactly the range, for ranges of
// every alignment.
func TestRangePrefixes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		s := 0x0a000000 + r.Uint32N(4096)
		e := s + r.Uint32N(700)
		if r.IntN(10) == 0 {
			e = s
		}
		start, end := u32(s), u32(e)
		ps := RangePrefixes(start, end)
		n := uint64(0)
		for i, p := range ps {
			n += 1 << (32 - p.Bits())
			if p.Masked() != p {
				t.Fatalf("%s-%s: %s is not a masked prefix", start, end, p)
			}
			if i > 0 && !ps[i-1].Addr().Less(p.Addr()) {
				t.Fatalf("%s-%s: prefixes out of order: %v", start, end, ps)
			}
		}
		if n != uint64(e-s)+1 {
			t.Fatalf("%s-%s: %v cover %d addresses, want %d", start, end, ps, n, e-s+1)
		}
		for _, a := range []uint32{s, e, s + (e-s)/2} {
			if !slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(u32(a)) }) {
				t.Fatalf("%s-%s: %s not covered by %v", start, end, u32(a), ps)
			}
		}
		for _, a := range []uint32{s - 1, e + 1} {
			if slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(u32(a)) }) {
				t.Fatalf("%s-%s: %s covered by %v", start, end, u32(a), ps)
			}
		}
	}
	if got := RangePrefixes(netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("255.255.255.255")); len(got) != 1 || got[0].Bits() != 0 {
		t.Fatalf("the whole space: %v", got)
	}
}

func u32(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// BenchmarkBound is one census of a pool: four filtered dumps.
func BenchmarkBound(b *testing.B) {
	d, err := Open()
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	pool := RangePrefixes(netip.MustParseAddr("127.80.0.1"), netip.MustParseAddr("127.81.0.0"))
	for b.Loop() {
		if _, err := d.Bound(pool, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// TestOwner: the kernel names the uid owning the client end of a loopback
// connection; a connection that is not on this host has none.
func TestOwner(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	d, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	client := sc.RemoteAddr().(*net.TCPAddr).AddrPort()
	server := sc.LocalAddr().(*net.TCPAddr).AddrPort()
	for range 3 {
		uid, err := d.Owner(client, server)
		if err != nil || uid != uint32(os.Getuid()) {
			t.Fatalf("owner = %d, %v; want %d", uid, err, os.Getuid())
		}
	}
	if uid, err := d.Owner(netip.MustParseAddrPort("192.0.2.1:9"), server); err == nil {
		t.Fatalf("a socket that does not exist has owner %d", uid)
	}
}
