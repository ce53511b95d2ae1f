package topology

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/ipvirt/ipvirt/internal/testenv"
)

func TestNthAddr(t *testing.T) {
	lan := netip.MustParsePrefix("10.77.0.0/24")
	for _, tt := range []struct {
		num  int
		want string
	}{{1, "10.77.0.1"}, {2, "10.77.0.2"}, {254, "10.77.0.254"}, {0, ""}, {255, ""}, {-1, ""}} {
		got, err := nthAddr(lan, tt.num)
		if tt.want == "" {
			if err == nil {
				t.Errorf("nthAddr(%d) = %v, want an error", tt.num, got)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("nthAddr(%d) = %v, %v; want %s", tt.num, got, err, tt.want)
		}
	}
}

// A host on the LAN reaches another over real veths and the bridge; the
// second adapter is on the second LAN; Close leaves no namespace behind.
func TestBuildConnectClose(t *testing.T) {
	testenv.RequireRoot(t)
	n, err := Build(Spec{
		LANs: []netip.Prefix{netip.MustParsePrefix("10.78.0.0/24"), netip.MustParsePrefix("10.78.1.0/24")},
		Hosts: []HostSpec{
			{Name: "session", Adapters: []int{2, 2}},
			{Name: "server", Adapters: []int{3}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	sess, _ := n.Host("session")
	srv, _ := n.Host("server")
	if len(sess.Adapters) != 2 || sess.Adapters[1].Prefix.String() != "10.78.1.2/24" || len(sess.Adapters[0].MAC) != 6 {
		t.Fatalf("session adapters %+v", sess.Adapters)
	}
	var ln net.Listener
	if err := srv.Do(func() (err error) { ln, err = net.Listen("tcp", "10.78.0.3:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte(c.RemoteAddr().String()))
			c.Close()
		}
	}()
	var seen string
	err = sess.Do(func() error {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		b := make([]byte, 64)
		k, _ := c.Read(b)
		seen = string(b[:k])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(seen, "10.78.0.2:") {
		t.Fatalf("server saw %q, want the session host's eth0 10.78.0.2", seen)
	}
	// The listener lives in the server's namespace, not here.
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatal("reached the server's address from the root namespace")
	}
	names := []string{sess.NS, srv.NS, n.id + "-lan"}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if _, err := os.Stat(filepath.Join("/run/netns", name)); err == nil {
			t.Errorf("namespace %s left behind", name)
		}
	}
}

// A namespace named for a process that no longer runs is removed; one of a
// live process (this one) is not.
func TestCleanupStale(t *testing.T) {
	testenv.RequireRoot(t)
	dead := Prefix + "999999999-1-lan" // no such pid
	h, err := newHost("x", dead)
	if err != nil {
		t.Fatal(err)
	}
	h.nl.Close()
	h.nl = nil
	h.ns.Close()
	mine, err := newHost("y", Prefix+"1-7-lan") // pid 1 is alive
	if err != nil {
		t.Fatal(err)
	}
	defer mine.destroy()
	gone, err := CleanupStale()
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) == 0 || !slices.Contains(gone, dead) {
		t.Fatalf("CleanupStale removed %v, want %s", gone, dead)
	}
	if slices.Contains(gone, mine.NS) {
		t.Fatalf("removed %s of a live process", mine.NS)
	}
	if _, err := netns.GetFromName(dead); err == nil {
		t.Fatalf("%s still there", dead)
	}
}
