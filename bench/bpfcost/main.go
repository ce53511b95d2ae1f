// Command bpfcost splits the kernel interceptor's connect cost program by
// program. The connectloop loop (socket + connect + close over loopback)
// runs in an audit session of its own per variant, each session in a
// cgroup of its own: with nothing attached, with a bare bpf_bind program,
// and with ipvirt's programs (lsp/bpf, attached as ipvirtd attaches them)
// with enforcement off and on, and on with parts of enforcement detached
// or replaced by programs that only allow (what the hook itself costs,
// without its body), or with every tag slot taken so that sockets are
// tagged in socket-local storage instead. -ref OBJ adds the programs of
// another build's objects (for example the last commit's:
// git show HEAD:lsp/bpf/intercept_bpfel.o > /tmp/ref.o), every cgroup
// program in them attached, with enforcement off and on: how that build
// ran. All variants run interleaved round by round, each round starting
// one variant later; it prints each variant's median and minimum ns/op
// and both as ratios to the plain loop's. Needs root (eBPF, audit
// sessions).
//
//	sudo go run ./bench/bpfcost [-rounds 11] [-n 20000] [-only REGEXP] [-ref OBJ]
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/ipvirt/ipvirt/bench/internal/benchkit"
	"github.com/ipvirt/ipvirt/internal/cgroup"
	"github.com/ipvirt/ipvirt/lsp/bpf"
	"github.com/ipvirt/ipvirt/sim/loginsession"
)

// 127.83/16 is this bench's alone (bench/peers has 127.82).
var (
	loHost = netip.MustParseAddr("127.0.0.1")
	vip    = netip.MustParseAddr("127.83.0.10")
	pool   = bpf.Range{Start: netip.MustParseAddr("127.83.0.1"), End: netip.MustParseAddr("127.83.1.254")}
)

const uidBase = 60970 // login uids of the sessions: no such users are needed

// spec is one variant.
type spec struct {
	name    string
	plain   bool     // nothing attached
	bare    bool     // the bare bpf_bind program alone
	enforce bool     // Options.Enforce
	detach  []string // ipvirt links to detach (pin names without "link_")
	noop    []string // ipvirt links whose program is swapped for one that only allows
	full    bool     // every tag slot taken by a socket that does not exist
	ref     bool     // the -ref object's cgroup programs instead of this build's
}

var specs = []spec{
	{name: "plain connect (baseline)", plain: true},
	{name: "bare cgroup/connect4 bpf_bind", bare: true},
	{name: "ipvirt, enforce off"},
	{name: "ipvirt, enforce on", enforce: true},
	{name: "on, tags in socket storage (slots full)", enforce: true, full: true},
	{name: "on, no tagging (sock_create/release off)", enforce: true, detach: []string{"sock_create", "sock_release"}},
	{name: "on, no packet hooks (egress/ingress off)", enforce: true, detach: []string{"egress", "ingress"}},
	{name: "on, enforcement hooks that only allow", enforce: true, noop: []string{"sock_create", "sock_release", "egress", "ingress"}},
}

var refSpecs = []spec{
	{name: "ref, enforce off", ref: true},
	{name: "ref, enforce on", ref: true, enforce: true},
}

type variant struct {
	spec
	s       *loginsession.Session
	want    netip.Addr
	samples []float64
}

func main() {
	rounds := flag.Int("rounds", 11, "interleaved rounds")
	n := flag.Int("n", 20000, "connects per loop")
	only := flag.String("only", "", "run only the variants whose name matches (the baseline always runs)")
	ref := flag.String("ref", "", "another build's intercept_bpfel.o: adds its programs as variants")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Println("bpfcost: skipped: needs root (eBPF programs, audit sessions)")
		return
	}
	if ok, why := loginsession.Available(loginsession.Audit); !ok {
		fmt.Println("bpfcost: skipped: " + why)
		return
	}
	var re *regexp.Regexp
	if *only != "" {
		re = regexp.MustCompile(*only)
	}
	all := specs
	if *ref != "" {
		all = append(all, refSpecs...)
	}
	if err := run(all, *rounds, *n, re, *ref); err != nil {
		fmt.Fprintln(os.Stderr, "bpfcost:", err)
		os.Exit(1)
	}
}

func run(all []spec, rounds, n int, only *regexp.Regexp, refObj string) error {
	work, results, err := benchkit.WorkDir()
	if err != nil {
		return err
	}
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()
	undo = append(undo, func() { os.RemoveAll(work) })
	tools, err := benchkit.Build(work)
	if err != nil {
		return err
	}
	ln, err := benchkit.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	undo = append(undo, func() { ln.Close() })

	var vs []*variant
	for i, sp := range all {
		if only != nil && !sp.plain && !only.MatchString(sp.name) {
			continue
		}
		v := &variant{spec: sp, want: vip}
		g, err := cgroup.Create(fmt.Sprintf("ipvirt-bench-bpfcost-%d-%d", os.Getpid(), i))
		if err != nil {
			return err
		}
		undo = append(undo, func() { g.Remove() })
		s, err := loginsession.StartWrapped(context.Background(), loginsession.Audit, uint32(uidBase+i), g.Wrap)
		if err != nil {
			return err
		}
		undo = append(undo, func() { s.Close() })
		v.s = s
		switch {
		case sp.plain:
			v.want = loHost
		case sp.bare:
			detach, err := benchkit.AttachBare(g.Dir, vip)
			if err != nil {
				return err
			}
			undo = append(undo, detach)
		default:
			pin := fmt.Sprintf("/sys/fs/bpf/ipvirt-bench-bpfcost-%d-%d", os.Getpid(), i)
			ic, err := bpf.Open(bpf.Options{CgroupPath: g.Dir, PinDir: pin, MachineIP: loHost,
				Pool: []bpf.Range{pool}, Enforce: sp.enforce})
			if err != nil {
				return err
			}
			undo = append(undo, func() { ic.Close() })
			if err := ic.SetSession(s.ID, vip); err != nil {
				return err
			}
			u, err := shape(pin, g.Dir, sp, refObj)
			if err != nil {
				return fmt.Errorf("%s: %w", sp.name, err)
			}
			undo = append(undo, u)
		}
		vs = append(vs, v)
	}

	for r := 0; r < rounds; r++ {
		for i := range vs {
			v := vs[(i+r)%len(vs)]
			line, err := benchkit.RunIn(v.s, results, nil, tools.Loop, "loop", strconv.Itoa(n), loHost.String(), strconv.Itoa(ln.Port()))
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			ns, src, err := benchkit.ParseLoop(line)
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			if src != v.want {
				return fmt.Errorf("%s: the loop left from %s, want %s", v.name, src, v.want)
			}
			v.samples = append(v.samples, ns)
			ln.Take(0, 0)
		}
		fmt.Fprintf(os.Stderr, "round %d/%d done\n", r+1, rounds)
	}

	base := vs[0]
	bm, bmin := benchkit.Median(base.samples), benchkit.Min(base.samples)
	fmt.Printf("socket + connect + close over loopback in audit sessions: %d rounds × %d connects, interleaved\n", rounds, n)
	if refObj != "" {
		fmt.Printf("(ref: %s)\n", refObj)
	}
	fmt.Printf("  %-44s %10s %10s %8s %8s\n", "", "median ns", "min ns", "ratio", "ratio")
	fmt.Printf("  %-44s %10s %10s %8s %8s\n", "", "", "", "median", "min")
	for _, v := range vs {
		m, mn := benchkit.Median(v.samples), benchkit.Min(v.samples)
		fmt.Printf("  %-44s %10.0f %10.0f %8.3f %8.3f\n", v.name, m, mn, m/bm, mn/bmin)
	}
	return nil
}

// shape makes the interceptor pinned at pin, attached to the cgroup
// directory cg, what sp asks, through its pins; the returned function
// undoes what shape loaded itself.
func shape(pin, cg string, sp spec, refObj string) (func(), error) {
	var undo []func()
	done := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	if sp.full {
		if err := fillSlots(pin); err != nil {
			return done, err
		}
	}
	links, err := pinnedLinks(pin)
	if err != nil {
		return done, err
	}
	defer func() {
		for _, l := range links {
			l.Close()
		}
	}()
	for name, l := range links {
		var err error
		switch {
		case sp.ref, slices.Contains(sp.detach, name):
			err = l.Detach()
		case slices.Contains(sp.noop, name):
			err = swapNoop(l, name)
		}
		if err != nil {
			return done, fmt.Errorf("link %s: %w", name, err)
		}
	}
	if sp.ref {
		u, err := attachRef(pin, cg, refObj)
		undo = append(undo, u)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// pinnedLinks opens the cgroup links pinned at pin, by name.
func pinnedLinks(pin string) (map[string]link.Link, error) {
	entries, err := os.ReadDir(pin)
	if err != nil {
		return nil, err
	}
	out := map[string]link.Link{}
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), "link_")
		if !ok || name == "new_session" || name == "exec" {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(pin, e.Name()), nil)
		if err != nil {
			for _, l := range out {
				l.Close()
			}
			return nil, fmt.Errorf("link %s: %w", name, err)
		}
		out[name] = l
	}
	return out, nil
}

// fillSlots takes every tag slot for a socket cookie no socket has (the
// top of the 64-bit space), so that every socket is tagged in socket-local
// storage: the cost where more sockets are open than there are slots.
func fillSlots(pin string) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pin, "map_sock_slots"), nil)
	if err != nil {
		return err
	}
	defer m.Close()
	value := make([]byte, m.ValueSize())
	for i := uint32(0); i < m.MaxEntries(); i++ {
		binary.NativeEndian.PutUint64(value, math.MaxUint64-uint64(i))
		if err := m.Put(i, value); err != nil {
			return fmt.Errorf("fill tag slot %d: %w", i, err)
		}
	}
	return nil
}

// attachRef loads the cgroup programs of another build's objects against
// the maps pinned at pin (of the same names) and attaches every one to cg.
func attachRef(pin, cg, obj string) (func(), error) {
	var undo []func()
	done := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	spec, err := ebpf.LoadCollectionSpec(obj)
	if err != nil {
		return done, err
	}
	for name, ps := range spec.Programs {
		if ps.Type != ebpf.CGroupSockAddr && ps.Type != ebpf.CGroupSock && ps.Type != ebpf.CGroupSKB {
			delete(spec.Programs, name)
		}
	}
	repl := map[string]*ebpf.Map{}
	for name := range spec.Maps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pin, "map_"+name), nil)
		if err != nil {
			continue // a map this build does not have: the loader makes one
		}
		undo = append(undo, func() { m.Close() })
		repl[name] = m
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return done, fmt.Errorf("load %s: %w", obj, err)
	}
	undo = append(undo, coll.Close)
	for name, p := range coll.Programs {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: spec.Programs[name].AttachType, Program: p})
		if err != nil {
			return done, fmt.Errorf("attach %s of %s: %w", name, obj, err)
		}
		undo = append(undo, func() { l.Close() })
	}
	return done, nil
}

// swapNoop gives link l (hook name) a program that only allows.
func swapNoop(l link.Link, name string) error {
	typ, at := ebpf.CGroupSKB, ebpf.AttachCGroupInetEgress
	switch name {
	case "sock_create":
		typ, at = ebpf.CGroupSock, ebpf.AttachCGroupInetSockCreate
	case "sock_release":
		typ, at = ebpf.CGroupSock, ebpf.AttachCgroupInetSockRelease
	case "ingress":
		at = ebpf.AttachCGroupInetIngress
	case "egress":
	default:
		return fmt.Errorf("no no-op program for %s", name)
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "noop_" + name, Type: typ, AttachType: at, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		return err
	}
	defer p.Close()
	return l.Update(p)
}
