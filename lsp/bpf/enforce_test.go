package bpf

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pyIn runs a Python program in session s with args; the program travels
// hex-encoded because the session leader reads its commands line by line.
func pyIn(prog string, args ...string) []string {
	return append([]string{"/usr/bin/python3", "-c", "import sys; exec(bytes.fromhex(sys.argv[1]).decode())",
		hex.EncodeToString([]byte(prog))}, args...)
}

// listenProbe listens on a wildcard address (argv[2]: "0.0.0.0" or "::"),
// writes its port to the file argv[3], and prints whether a connection
// arrived within 2 s.
const listenProbe = `
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
s = socket.socket(fam)
if fam == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind((sys.argv[2], 0))
s.listen(8)
open(sys.argv[3] + ".tmp", "w").write(str(s.getsockname()[1]))
import os; os.rename(sys.argv[3] + ".tmp", sys.argv[3])
s.settimeout(2)
try:
    c, a = s.accept()
    print("accepted", a[0])
except socket.timeout:
    print("timeout")
`

// sendProbe sends one datagram whose source is argv[2] by a way the bind
// and sendmsg hooks do not see, and prints the errno (0: sent).
const sendProbe = `
import errno, socket, struct, sys
how, src = sys.argv[2], sys.argv[3]
try:
    if how == "multicast_if":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
        s.sendto(b"x", ("239.1.2.3", 9))
    elif how == "ping":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        s.bind((src, 0))
        s.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"ipvirt", ("127.0.0.1", 0))
    elif how == "raw":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton("127.0.0.1"))
        s.sendto(hdr + struct.pack("!HHHH", 9, 9, 8, 0), ("127.0.0.1", 0))
    print(0)
except OSError as e:
    print(e.errno)
`

// TestEnforcementBeyondBind: ways a packet carries another holder's
// address that the bind, connect and sendmsg hooks never see. Each worked
// before the packet hooks; each is checked with enforcement off too, to
// show the attack is real, and on, where it must fail.
func TestEnforcementBeyondBind(t *testing.T) {
	const pingRange = "/proc/sys/net/ipv4/ping_group_range"
	if old, err := os.ReadFile(pingRange); err == nil {
		// systemd's default: ping sockets for every group.
		os.WriteFile(pingRange, []byte("0 2147483647"), 0o644)
		t.Cleanup(func() { os.WriteFile(pingRange, old, 0o644) })
	}
	for _, enforce := range []bool{false, true} {
		t.Run(fmt.Sprintf("enforce=%v", enforce), func(t *testing.T) {
			ic, _ := open(t, enforce)
			holder, other, withVIP := session(t, 62111), session(t, 62112), session(t, 62113)
			vip, ownVIP := "127.74.0.14", "127.74.0.15"
			if err := ic.SetSession(holder.ID, netip.MustParseAddr(vip)); err != nil {
				t.Fatal(err)
			}
			if err := ic.SetSession(withVIP.ID, netip.MustParseAddr(ownVIP)); err != nil {
				t.Fatal(err)
			}
			before, _ := ic.Denials()

			// A listener on a wildcard address in a session that does not
			// hold the VIP: IPv4 in a session without a VIP, dual-stack in
			// one with a VIP of its own (bind6 leaves "::" alone).
			for _, l := range []struct{ name, wild string }{
				{"0.0.0.0 without a VIP", "0.0.0.0"}, {"[::] with another VIP", "::"},
			} {
				s := other
				if l.wild == "::" {
					s = withVIP
				}
				portFile := filepath.Join(t.TempDir(), "port")
				os.Chmod(filepath.Dir(portFile), 0o777)
				done := make(chan string, 1)
				go func() {
					out, _ := runIn(t, s, pyIn(listenProbe, l.wild, portFile)...)
					done <- strings.TrimSpace(out)
				}()
				var port string
				for deadline := time.Now().Add(10 * time.Second); port == "" && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
					b, _ := os.ReadFile(portFile)
					port = string(b)
				}
				if port == "" {
					t.Fatalf("%s: the listener did not start: %s", l.name, <-done)
				}
				c, err := net.DialTimeout("tcp4", vip+":"+port, time.Second)
				if c != nil {
					c.Close()
				}
				got := <-done
				if blocked := err != nil; blocked != enforce {
					t.Errorf("%s: a connection to %s reached a socket of another session: dial err %v, listener said %q", l.name, vip, err, got)
				}
			}
			// The holder's own traffic is untouched.
			if out, code := runIn(t, withVIP, pyIn(sendProbe, "multicast_if", ownVIP)...); code != 0 || strings.TrimSpace(out) != "0" {
				t.Errorf("a session sending from its own VIP: %q (exit %d)", out, code)
			}
			// Sources the bind and sendmsg hooks do not police.
			for _, how := range []string{"multicast_if", "ping", "raw"} {
				s := other
				if how == "raw" {
					s = session(t, 0) // root inside a login session (su): CAP_NET_RAW
				}
				out, code := runIn(t, s, pyIn(sendProbe, how, vip)...)
				want := "0"
				if enforce {
					want = "1" // EPERM
				}
				if code != 0 || strings.TrimSpace(out) != want {
					t.Errorf("%s from %s (another session's VIP): errno %q (exit %d), want %s", how, vip, out, code, want)
				}
			}
			after, err := ic.Denials()
			if err != nil {
				t.Fatal(err)
			}
			if enforce && after-before < 5 {
				t.Errorf("packet drops counted %d, want at least 5", after-before)
			}
			if !enforce && after != before {
				t.Errorf("drops counted without enforcement: %d", after-before)
			}
			if enforce {
				seen := map[Hook]bool{}
				for len(ic.Events()) > 0 {
					if ev := <-ic.Events(); ev.Kind == EventDenied {
						seen[ev.Hook] = true
					}
				}
				if !seen[HookIngress] || !seen[HookEgress] {
					t.Errorf("drops reported for hooks %v, want ingress and egress", seen)
				}
			}
		})
	}
}
