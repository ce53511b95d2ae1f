package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"github.com/ipvirt/ipvirt/bench/internal/benchkit"
	"github.com/ipvirt/ipvirt/internal/cgroup"
	"github.com/ipvirt/ipvirt/lsp/bpf"
	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// Addresses of the loopback variants: 127.82/16 is this bench's alone
// (other benches and tests use 127.70-81), so neither the daemon's census
// nor another run's enforcement sees a stranger's socket on them.
var (
	loHost      = netip.MustParseAddr("127.0.0.1")
	fixedVIP    = netip.MustParseAddr("127.82.0.10") // forcebind, loopbind, bare bpf_bind, ipvirt eBPF
	daemonNet   = netip.MustParsePrefix("127.82.1.0/24")
	enforcePool = bpf.Range{Start: netip.MustParseAddr("127.82.0.1"), End: netip.MustParseAddr("127.82.1.254")}
)

const (
	plainName   = "plain connect (baseline)"
	bindName    = "kernel floor: loop binds (NO_PORT + bind)"
	forceName   = "force_bind-style LD_PRELOAD floor"
	bareName    = "bare cgroup/connect4 bpf_bind"
	libName     = "libipvirt.so, cached answer"
	refName     = "libipvirt.so -ref build, cached answer"
	forceVIP    = "force_bind floor, from the daemon's VIP"
	udpPlain    = "plain sendto (baseline)"
	udpForce    = "force_bind-style LD_PRELOAD floor, sendto"
	udpForceVIP = "force_bind floor, from the VIP, sendto"
	udpLib      = "libipvirt.so, cached answer, sendto"
	udpRef      = "libipvirt.so -ref build, sendto"
	ebpfName    = "ipvirt eBPF, enforce off"
	enforceName = "ipvirt eBPF, enforce on (bpf default)"
	uidPlain    = 60950 // login uids of the sessions: no such users are needed
	uidBare     = 60951
	uidIpvirt   = 60952
)

// setupLoopback adds the variants that run over loopback, each in a
// login session: those with no kernel program in one session (and its
// cgroup); the bare program and ipvirt's in a cgroup, and session, each.
func (b *bench) setupLoopback(root bool) error {
	ln, err := benchkit.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	b.onClose(func() { ln.Close() })
	kind := loginsession.POSIX
	if ok, why := loginsession.Available(loginsession.Audit); ok {
		kind = loginsession.Audit
	} else {
		b.skip("audit sessions", why+"; POSIX sessions instead")
	}
	plain, err := b.session(root, kind, uidPlain, "plain")
	if err != nil {
		return err
	}
	inPlain := func(env []string, bind netip.Addr) func(n int) (string, error) {
		return func(n int) (string, error) {
			args := b.loopArgs(n, loHost, ln.Port(), bind)
			return benchkit.RunIn(plain.s, b.results, env, args[0], args[1:]...)
		}
	}
	b.variants = append(b.variants,
		&variant{name: plainName, section: loopback, ln: ln, client: loHost, run: inPlain(nil, netip.Addr{})},
		&variant{name: bindName, section: loopback, ln: ln, client: fixedVIP, run: inPlain(nil, fixedVIP)},
		&variant{name: forceName, section: loopback, ln: ln, client: fixedVIP,
			run: inPlain([]string{"LD_PRELOAD=" + b.tools.ForceBind, "FORCEBIND_ADDR=" + fixedVIP.String()}, netip.Addr{})})

	sock, err := b.startDaemon(kind, plain.group)
	if err != nil {
		return err
	}
	libEnv := func(lib string) []string { return []string{"LD_PRELOAD=" + lib, "IPVIRT_SOCKET=" + sock} }
	// The VIP ipvirtd gives the session, from one connect with the
	// library, so that the floor is also timed from the very address the
	// library binds to: the same source, in the daemon's pool, which the
	// daemon's census watches.
	line, err := inPlain(libEnv(b.tools.Lib), netip.Addr{})(1)
	if err != nil {
		return err
	}
	_, vip, err := benchkit.ParseLoop(line)
	if err != nil {
		return err
	}
	if !daemonNet.Contains(vip) {
		return fmt.Errorf("with libipvirt.so the loop left from %s, not an address of %s: the interceptor was not on the path", vip, daemonNet)
	}
	forceEnv := func(a netip.Addr) []string {
		return []string{"LD_PRELOAD=" + b.tools.ForceBind, "FORCEBIND_ADDR=" + a.String()}
	}
	b.variants = append(b.variants,
		&variant{name: forceVIP, section: loopback, ln: ln, client: vip, run: inPlain(forceEnv(vip), netip.Addr{})},
		&variant{name: libName, section: loopback, ln: ln, client: vip, run: inPlain(libEnv(b.tools.Lib), netip.Addr{})})
	if b.ref != "" {
		b.variants = append(b.variants, &variant{name: refName, section: loopback, ln: ln, client: vip,
			run: inPlain(libEnv(b.ref), netip.Addr{})})
	}

	// UDP: the same three ways, each send from a fresh unconnected
	// socket, which the kernel would bind to the wildcard address (the
	// loop's getsockname says 0.0.0.0; the listener sees 127.0.0.1).
	uln, err := benchkit.ListenUDP("127.0.0.1:0")
	if err != nil {
		return err
	}
	b.onClose(func() { uln.Close() })
	if !uln.Exact {
		b.skip("exact UDP counts", "no SO_RCVBUFFORCE (needs root): datagrams the listener's buffer drops are not counted against a variant")
	}
	inPlainUDP := func(env []string) func(n int) (string, error) {
		return func(n int) (string, error) {
			args := b.udpArgs(n, loHost, uln.Port())
			return benchkit.RunIn(plain.s, b.results, env, args[0], args[1:]...)
		}
	}
	b.variants = append(b.variants,
		&variant{name: udpPlain, section: udp, ln: uln, client: netip.IPv4Unspecified(), server: loHost, run: inPlainUDP(nil)},
		&variant{name: udpForce, section: udp, ln: uln, client: fixedVIP, run: inPlainUDP(forceEnv(fixedVIP))},
		&variant{name: udpForceVIP, section: udp, ln: uln, client: vip, run: inPlainUDP(forceEnv(vip))},
		&variant{name: udpLib, section: udp, ln: uln, client: vip, run: inPlainUDP(libEnv(b.tools.Lib))})
	if b.ref != "" {
		b.variants = append(b.variants, &variant{name: udpRef, section: udp, ln: uln, client: vip, run: inPlainUDP(libEnv(b.ref))})
	}

	if !root {
		b.skip(bareName, "needs root (eBPF)")
		b.skip(ebpfName, "needs root (eBPF, audit sessions)")
		b.skip(enforceName, "needs root (eBPF, audit sessions)")
		return nil
	}
	if err := b.setupBare(kind, ln); err != nil {
		return err
	}
	return b.setupIpvirtBPF(kind, ln)
}

// placed is a login session, inside a cgroup of its own when root.
type placed struct {
	s     *loginsession.Session
	group *cgroup.Group // nil when not root
}

func (b *bench) session(root bool, kind loginsession.Kind, uid uint32, tag string) (placed, error) {
	var p placed
	var wrap func([]string) []string
	if root {
		g, err := cgroup.Create(fmt.Sprintf("ipvirt-bench-peers-%d-%s", os.Getpid(), tag))
		if err != nil {
			return p, err
		}
		b.onClose(func() { g.Remove() })
		p.group, wrap = g, g.Wrap
	}
	s, err := loginsession.StartWrapped(context.Background(), kind, uid, wrap)
	if err != nil {
		return p, fmt.Errorf("%s session: %w", tag, err)
	}
	b.onClose(func() { s.Close() })
	p.s = s
	return p, nil
}

// startDaemon runs ipvirtd for libipvirt.so, scoped (as root) to the
// plain session's cgroup so that no other login on the host is its
// business, and returns its socket.
func (b *bench) startDaemon(kind loginsession.Kind, g *cgroup.Group) (string, error) {
	dir := filepath.Join(b.work, "d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	body := fmt.Sprintf("adapter: lo\nsource: static\nsession_identity: %s\nadmins: {users: [], groups: []}\n"+
		"static_pool: {start: 127.82.1.10, end: 127.82.1.250, subnet_mask: 255.255.255.0}\n", kind)
	if g != nil {
		body += "scope: " + g.Path + "\n"
	}
	d, err := daemonproc.New(dir, body, false)
	if err != nil {
		return "", err
	}
	if err := d.Start(context.Background()); err != nil {
		return "", err
	}
	b.onClose(func() { d.Stop(syscall.SIGTERM) })
	return d.Socket, nil
}

// setupBare attaches the bare bpf_bind program to a cgroup and runs its
// variant in a session inside it.
func (b *bench) setupBare(kind loginsession.Kind, ln *benchkit.Listener) error {
	p, err := b.session(true, kind, uidBare, "bare")
	if err != nil {
		return err
	}
	detach, err := benchkit.AttachBare(p.group.Dir, fixedVIP)
	if errors.Is(err, benchkit.ErrBPFUnsupported) {
		b.skip(bareName, err.Error())
		return nil
	}
	if err != nil {
		return err
	}
	b.onClose(detach)
	b.variants = append(b.variants, &variant{name: bareName, section: loopback, ln: ln, client: fixedVIP,
		run: func(n int) (string, error) {
			args := b.loopArgs(n, loHost, ln.Port(), netip.Addr{})
			return benchkit.RunIn(p.s, b.results, nil, args[0], args[1:]...)
		}})
	return nil
}

// setupIpvirtBPF attaches ipvirt's own programs (lsp/bpf, as ipvirtd does
// with interceptor: bpf) to a cgroup, gives its session the VIP in their
// map, and adds two variants: enforcement off (as bench/bpfconnect) and
// on, the default with interceptor: bpf (a socket tag at creation and a
// map lookup per packet, both ways).
func (b *bench) setupIpvirtBPF(kind loginsession.Kind, ln *benchkit.Listener) error {
	if kind != loginsession.Audit {
		b.skip(ebpfName, "needs audit sessions (the programs read the task's audit session)")
		b.skip(enforceName, "needs audit sessions")
		return nil
	}
	p, err := b.session(true, kind, uidIpvirt, "ipvirt")
	if err != nil {
		return err
	}
	ic, err := bpf.Open(bpf.Options{
		CgroupPath: p.group.Dir,
		PinDir:     fmt.Sprintf("/sys/fs/bpf/ipvirt-bench-peers-%d", os.Getpid()),
		MachineIP:  loHost,
		Pool:       []bpf.Range{enforcePool},
	})
	if errors.Is(err, bpf.ErrUnsupported) {
		b.skip(ebpfName, err.Error())
		b.skip(enforceName, err.Error())
		return nil
	}
	if err != nil {
		return err
	}
	b.onClose(func() { ic.Close() })
	if err := ic.SetSession(p.s.ID, fixedVIP); err != nil {
		return err
	}
	run := func(n int) (string, error) {
		args := b.loopArgs(n, loHost, ln.Port(), netip.Addr{})
		return benchkit.RunIn(p.s, b.results, nil, args[0], args[1:]...)
	}
	b.variants = append(b.variants,
		&variant{name: ebpfName, section: loopback, ln: ln, client: fixedVIP, run: run},
		&variant{name: enforceName, section: loopback, ln: ln, client: fixedVIP, run: run,
			before: func() error { return ic.SetEnforce(true) },
			after:  func() error { return ic.SetEnforce(false) }})
	return nil
}
