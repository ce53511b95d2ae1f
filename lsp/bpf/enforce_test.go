package bpf

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/loginsession"
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
// show the attack is real, and on, where it must fail: with the sockets'
// tags in their slots, and in socket-local storage (every slot taken).
func TestEnforcementBeyondBind(t *testing.T) {
	const pingRange = "/proc/sys/net/ipv4/ping_group_range"
	if old, err := os.ReadFile(pingRange); err == nil {
		// systemd's default: ping sockets for every group.
		os.WriteFile(pingRange, []byte("0 2147483647"), 0o644)
		t.Cleanup(func() { os.WriteFile(pingRange, old, 0o644) })
	}
	for _, mode := range []string{"enforce=false", "enforce=true", "enforce=true,slots=full"} {
		t.Run(mode, func(t *testing.T) {
			enforce := mode != "enforce=false"
			ic, _ := open(t, enforce)
			if mode == "enforce=true,slots=full" {
				fillSlots(t, ic)
			}
			holder, other, withVIP := testenv.AuditSession(t, 62111), testenv.AuditSession(t, 62112), testenv.AuditSession(t, 62113)
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
					s = testenv.AuditSession(t, 0) // root inside a login session (su): CAP_NET_RAW
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

// fillSlots takes every tag slot for a cookie no socket has, so that the
// sockets created from now on are tagged in socket-local storage (as when
// more sockets are open than there are slots).
func fillSlots(t *testing.T, ic *Interceptor) {
	t.Helper()
	m := ic.ko.maps["sock_slots"]
	for i := uint32(0); i < m.MaxEntries(); i++ {
		if err := m.Put(i, interceptTagSlot{Cookie: ^uint64(i)}); err != nil {
			t.Fatal(err)
		}
	}
}

// childProbe connects to argv[2] port 9, where nothing listens, from a new
// socket ("new") or from an accepted one it disconnected first ("accepted"),
// so that the kernel picks the source; prints "refused" when the SYN left
// (the reset came back) and "timeout" when it was dropped.
const childProbe = `
import ctypes, socket, sys
how, dst = sys.argv[2], sys.argv[3]
if how == "new":
    s = socket.socket()
else:
    ln = socket.socket()
    ln.bind(("0.0.0.0", 0))
    ln.listen(1)
    c = socket.create_connection(("127.0.0.1", ln.getsockname()[1]))
    s, _ = ln.accept()
    unspec = (ctypes.c_ubyte * 16)()
    if ctypes.CDLL(None, use_errno=True).connect(s.fileno(), unspec, 16) != 0:
        print("disconnect errno", ctypes.get_errno())
        sys.exit(0)
s.settimeout(2)
try:
    s.connect((dst, 9))
    print("connected")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
except OSError as e:
    print("errno", e.errno)
`

// TestEnforcementImplicitSource: where another holder's VIP is a local
// address, a connect to it from a session without a VIP leaves from the
// VIP itself (the kernel's choice; no bind or connect hook sees it), from
// a new socket and from an accepted one that was disconnected and
// connected again (a socket sock_create never saw: it must inherit its
// listener's tag). Enforcement drops the SYN, with the tags in their
// slots and in socket-local storage. The sessions run in a network
// namespace of their own, where the VIP is on lo.
func TestEnforcementImplicitSource(t *testing.T) {
	const vip = "127.74.0.16"
	for _, mode := range []string{"off", "on", "on, slots full"} {
		t.Run(mode, func(t *testing.T) {
			enforce := mode != "off"
			ic, _ := open(t, enforce)
			if mode == "on, slots full" {
				fillSlots(t, ic)
			}
			holder := testenv.AuditSession(t, 62121)
			if err := ic.SetSession(holder.ID, netip.MustParseAddr(vip)); err != nil {
				t.Fatal(err)
			}
			other, err := loginsession.StartWrapped(context.Background(), loginsession.Audit, 62122, func(argv []string) []string {
				return append([]string{"unshare", "-n", "/bin/sh", "-c",
					`ip link set lo up && ip addr add ` + vip + `/32 dev lo && exec "$@"`, "sh"}, argv...)
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { other.Close() })
			for _, how := range []string{"new", "accepted"} {
				out, code := runIn(t, other, pyIn(childProbe, how, vip)...)
				want := "refused"
				if enforce {
					want = "timeout"
				}
				if got := strings.TrimSpace(out); code != 0 || got != want {
					t.Errorf("%s socket to %s: %q (exit %d), want %s", how, vip, got, code, want)
				}
			}
		})
	}
}

// enforceAttached reports, for each enforcement hook, whether ic holds its
// link, its pin exists, and the kernel runs its program on the cgroup.
func enforceAttached(t *testing.T, ic *Interceptor, pin string) map[string][3]bool {
	t.Helper()
	out := map[string][3]bool{}
	for _, h := range enforceHooks {
		var st [3]bool
		l, ok := ic.ko.links[h.name]
		st[0] = ok
		_, err := os.Stat(filepath.Join(pin, "link_"+h.name))
		st[1] = err == nil
		if ok {
			info, err := l.Info()
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(ic.CgroupPath())
			if err != nil {
				t.Fatal(err)
			}
			res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: h.attach})
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range res.Programs {
				st[2] = st[2] || p.ID == info.Program
			}
		}
		out[h.name] = st
	}
	return out
}

// TestEnforcementHooksOnlyWhileOn: the hooks that tag sockets and police
// packets are attached (and pinned) only while enforcement is on, whether
// SetEnforce turns it on or off, or a daemon adopting the pins asks for
// the other setting; and what they enforce follows.
func TestEnforcementHooksOnlyWhileOn(t *testing.T) {
	ic, pin := open(t, false)
	want := func(ic *Interceptor, on bool, when string) {
		t.Helper()
		for name, st := range enforceAttached(t, ic, pin) {
			if st != [3]bool{on, on, on} {
				t.Errorf("%s: %s: held, pinned, attached = %v, want all %v", when, name, st, on)
			}
		}
	}
	probe := func(on bool, when string) {
		t.Helper()
		s := testenv.AuditSession(t, 62131)
		out, code := runIn(t, s, pyIn(sendProbe, "multicast_if", "127.74.0.17")...)
		wantErr := "0"
		if on {
			wantErr = "1"
		}
		if code != 0 || strings.TrimSpace(out) != wantErr {
			t.Errorf("%s: multicast_if from a pool address: errno %q (exit %d), want %s", when, out, code, wantErr)
		}
	}
	want(ic, false, "Open(Enforce: false)")
	probe(false, "Open(Enforce: false)")
	if err := ic.SetEnforce(true); err != nil {
		t.Fatal(err)
	}
	want(ic, true, "SetEnforce(true)")
	probe(true, "SetEnforce(true)")
	// A slot whose socket was released while no sock_release ran (the
	// hooks detached in between): turning enforcement off frees them all.
	slots := ic.ko.maps["sock_slots"]
	if err := slots.Put(uint32(7), interceptTagSlot{Cookie: 7, Tag: interceptSockTag{Sid: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := ic.SetEnforce(false); err != nil {
		t.Fatal(err)
	}
	want(ic, false, "SetEnforce(false)")
	probe(false, "SetEnforce(false)")
	var slot interceptTagSlot
	if err := slots.Lookup(uint32(7), &slot); err != nil || slot.Cookie != 0 {
		t.Errorf("after SetEnforce(false) tag slot 7 holds cookie %d (%v), want free", slot.Cookie, err)
	}

	for i, on := range []bool{true, true, false, false, true} {
		if err := ic.Release(); err != nil {
			t.Fatal(err)
		}
		again, err := Open(Options{PinDir: pin, Enforce: on, MachineIP: netip.MustParseAddr("127.0.0.1"), Pool: pool})
		if err != nil {
			t.Fatalf("reopen %d: %v", i, err)
		}
		t.Cleanup(func() { again.Close() })
		if !again.Adopted() {
			t.Fatalf("reopen %d attached fresh instead of adopting", i)
		}
		ic = again
		when := fmt.Sprintf("adopted with Enforce: %v", on)
		want(ic, on, when)
		probe(on, when)
	}
}
