package daemon

// The start-up cross-check (issue 10): the lease file is one witness of who
// holds which VIP, and it can be wrong (emptied and unsealed, restored from
// an old backup, rolled back by bbolt to its older meta page). The kernel
// is another: the VIPs ipvirt labelled on the adapter, the kernel
// interceptor's maps, and the sockets bound to pool addresses with the
// processes that hold them. Before serving, every pool address the kernel
// shows in use that the store does not account for is either adopted for
// the holder the evidence proves, or the daemon refuses to start and names
// the evidence. It never starts fresh over live holders.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netlink"

	"github.com/ipvirt/ipvirt/internal/adapter"
	"github.com/ipvirt/ipvirt/internal/alloc"
	"github.com/ipvirt/ipvirt/internal/census"
	"github.com/ipvirt/ipvirt/internal/config"
	"github.com/ipvirt/ipvirt/internal/identity"
	"github.com/ipvirt/ipvirt/internal/lease"
	"github.com/ipvirt/ipvirt/internal/policy"
	"github.com/ipvirt/ipvirt/lsp/bpf"
)

// scope is what a census looks at: the addresses the source hands out,
// without the adapter's own.
type scope struct {
	include, exclude []netip.Prefix
}

func (s *scope) contains(a netip.Addr) bool {
	in := slices.ContainsFunc(s.include, func(p netip.Prefix) bool { return p.Contains(a) })
	return in && !slices.ContainsFunc(s.exclude, func(p netip.Prefix) bool { return p.Contains(a) })
}

// scopeFor is the census scope of a configuration: the static pool, or for
// DHCP the adapter's subnet (and the subnets of the restored leases) less
// the adapter's addresses that are not ipvirt's. A loopback adapter's
// subnet is all of 127/8, where every local service has sockets and every
// address is local without being installed: there only the restored
// leases' subnets are looked at, and grants are checked one by one.
func scopeFor(cfg config.Config, a adapter.Adapter, leases []lease.Lease) *scope {
	sc := &scope{}
	if mip := a.MIP(); mip.IsValid() {
		sc.exclude = append(sc.exclude, netip.PrefixFrom(mip, mip.BitLen()))
	}
	if cfg.UsesPool() {
		sc.include = census.RangePrefixes(cfg.StaticPool.Start, cfg.StaticPool.End)
		return sc
	}
	if !a.Loopback && a.Addr.IsValid() {
		sc.include = append(sc.include, a.Addr.Masked())
	}
	for _, l := range leases {
		if p := l.Subnet.Masked(); p.IsValid() && !slices.Contains(sc.include, p) {
			sc.include = append(sc.include, p)
		}
	}
	if !a.Loopback && a.Index > 0 {
		if link, err := netlink.LinkByIndex(a.Index); err == nil {
			if addrs, err := netlink.AddrList(link, netlink.FAMILY_V4); err == nil {
				for _, ad := range addrs {
					ip, ok := netip.AddrFromSlice(ad.IP.To4())
					if ok && ad.Label != adapter.Label(a.Name) {
						sc.exclude = append(sc.exclude, netip.PrefixFrom(ip, 32))
					}
				}
			}
		}
	}
	return sc
}

// poolCensus is the manager's census (alloc.Census): sock_diag dumps over
// the scope, less the daemon's own sockets (a DHCP relay socket may sit in
// the subnet).
type poolCensus struct {
	dump     *census.Dumper
	scope    atomic.Pointer[scope]
	resolver identity.Resolver
}

// Bound implements alloc.Census.
func (c *poolCensus) Bound(extra []netip.Addr) ([]census.Socket, error) {
	sc := c.scope.Load()
	in := sc.include
	if len(extra) > 0 {
		in = slices.Clone(in)
		for _, a := range extra {
			in = append(in, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	socks, err := c.dump.Bound(in, sc.exclude)
	if err != nil || len(socks) == 0 {
		return socks, err
	}
	mine := ownSockets()
	return slices.DeleteFunc(socks, func(s census.Socket) bool { return mine[s.Inode] }), nil
}

// ownSockets are the inodes of this process's sockets.
func ownSockets() map[uint64]bool {
	out := map[uint64]bool{}
	dir := "/proc/self/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, e := range ents {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue
		}
		if rest, ok := strings.CutPrefix(link, "socket:["); ok {
			if ino, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64); err == nil {
				out[ino] = true
			}
		}
	}
	return out
}

// owner is a process holding a socket bound to a pool address.
type owner struct {
	pid int
	identity.Caller
}

func (o owner) String() string {
	s := fmt.Sprintf("pid %d (uid %d", o.pid, o.SessionUID)
	if o.Session.Valid() {
		s += ", session " + o.Session.String()
	} else {
		s += ", in no session"
	}
	if o.Exe != "" {
		s += ", " + o.Exe
	}
	return s + ")"
}

// boundSocket is a socket and the processes holding it.
type boundSocket struct {
	census.Socket
	owners []owner
}

func (b boundSocket) String() string {
	if len(b.owners) == 0 {
		return fmt.Sprintf("bound by no process found (uid %d) %s", b.UID, b.Socket)
	}
	who := make([]string, len(b.owners))
	for i, o := range b.owners {
		who[i] = o.String()
	}
	return "bound by " + strings.Join(who, " and ") + " " + b.Socket.String()
}

// owned resolves the processes holding socks (/proc/PID/fd, then each
// process's session, login uid and executable).
func (c *poolCensus) owned(socks []census.Socket) []boundSocket {
	inodes := make([]uint64, len(socks))
	for i, s := range socks {
		inodes[i] = s.Inode
	}
	pids, _ := census.Owners("/proc", inodes)
	out := make([]boundSocket, len(socks))
	for i, s := range socks {
		out[i].Socket = s
		for _, pid := range pids[s.Inode] {
			caller, err := c.resolver.Resolve(pid, s.UID, 0)
			if err != nil {
				continue // gone since
			}
			out[i].owners = append(out[i].owners, owner{pid: pid, Caller: caller})
		}
	}
	return out
}

// Describe implements alloc.Census.
func (c *poolCensus) Describe(socks []census.Socket) string {
	var parts []string
	for _, b := range c.owned(socks) {
		parts = append(parts, b.String())
	}
	return strings.Join(parts, "; ")
}

// evidence is what the kernel shows of one pool address.
type evidence struct {
	addr    netip.Addr
	bits    int
	socks   []boundSocket
	label   string      // the adapter it is labelled on, if it is
	entries []bpf.Entry // kernel interceptor map entries naming it
	why     string      // why it was not adopted
}

func (e *evidence) String() string {
	var parts []string
	for _, s := range e.socks {
		parts = append(parts, s.String())
	}
	if e.label != "" {
		parts = append(parts, "labelled on "+e.label)
	}
	for _, en := range e.entries {
		p := fmt.Sprintf("kernel interceptor map: session %d", en.Session)
		if !en.Exe.IsZero() {
			p += ", executable " + en.Exe.String()
		}
		parts = append(parts, p)
	}
	s := e.addr.String() + ": " + strings.Join(parts, "; ")
	if e.why != "" {
		s += " [not adopted: " + e.why + "]"
	}
	return s
}

// EvidenceError is the refusal to start: pool addresses in use that no
// lease accounts for and whose holder could not be adopted.
type EvidenceError struct {
	Store     string
	Addresses []string // one line per address, with its evidence
	Labelled  []string // ip commands removing the labelled ones
}

func (e *EvidenceError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "start-up cross-check: %d pool address(es) in use that no lease in %s accounts for "+
		"(was the lease file emptied, replaced or rolled back?); serving now could hand them to new sessions while their holders still use them:\n",
		len(e.Addresses), e.Store)
	for _, a := range e.Addresses {
		b.WriteString("  " + a + "\n")
	}
	b.WriteString("To start: restore the lease file from a backup taken while ipvirtd was stopped; or end the processes " +
		"(or their sessions) named above")
	if len(e.Labelled) > 0 {
		b.WriteString(", and remove the labelled addresses no session uses (" + strings.Join(e.Labelled, "; ") + ")")
	}
	b.WriteString("; then start ipvirtd again.")
	return b.String()
}

// before is the evidence read before Restore, which changes it: Restore's
// grants overwrite the kernel maps' entries of restored holders, its
// releases remove labels and entries.
type before struct {
	labelled []netip.Prefix
	entries  []bpf.Entry
}

func (d *Daemon) evidenceBefore() (before, error) {
	var b before
	if in := (adapter.Installer{Adapter: d.adapter}); in.Needed() {
		var err error
		if b.labelled, err = in.Installed(); err != nil {
			return b, fmt.Errorf("start-up cross-check: %w", err)
		}
	}
	if d.kernel != nil {
		var err error
		if b.entries, err = d.kernel.ic.Entries(); err != nil {
			return b, fmt.Errorf("start-up cross-check: kernel interceptor: %w", err)
		}
	}
	return b, nil
}

// crossCheck runs after Restore and before anything is served: it adopts
// the holders the kernel's evidence proves and refuses to start over the
// rest (see the top of this file). Only addresses the store does not
// account for are looked at; those it does (holders that ended while the
// daemon was down, leases of another source) are Restore's, and the
// pre-grant check keeps any with sockets still bound out of the pool.
//
// An address is adopted when the evidence names exactly one live holder
// that has no lease, and shows the address is its VIP now: the processes
// of one live session (per program: one listed program of it) hold
// sockets bound to it and it is labelled on the adapter (on a loopback
// adapter, which carries no labels, the sockets suffice), or the kernel
// interceptor's map gives it to that live session.
//
// Evidence of a current VIP (a label, a live map entry) that names no
// single adoptable holder refuses the start: the label alone (an idle
// session may still use the address), two holders, a session whose holder
// cannot be named, a holder with another lease, a source that cannot take
// an address back (source.Claimer; DHCP asks its server). Sockets without such
// evidence are no current VIP (a release left them behind, or a service
// bound every local address): the pre-grant check keeps the address out
// of the pool while they are open.
func (d *Daemon) crossCheck(b before, rep alloc.RestoreReport) error {
	ctx, cancel := context.WithTimeout(context.Background(), alloc.DefaultAcquireTimeout)
	defer cancel()
	socks, err := d.mgr.Census(ctx)
	if err != nil {
		return fmt.Errorf("start-up cross-check: %w", err)
	}
	sc := d.census.scope.Load()
	held := map[netip.Addr]bool{}
	hasLease := map[lease.Holder]netip.Addr{}
	for _, l := range d.mgr.Leases() {
		held[l.Addr] = true
		hasLease[l.Holder] = l.Addr
	}
	evs := map[netip.Addr]*evidence{}
	get := func(a netip.Addr, bits int) *evidence {
		if held[a] || rep.Addrs[a] || !sc.contains(a) {
			return nil
		}
		e := evs[a]
		if e == nil {
			e = &evidence{addr: a, bits: bits}
			evs[a] = e
		}
		return e
	}
	for _, p := range b.labelled {
		if e := get(p.Addr(), p.Bits()); e != nil {
			e.label = d.adapter.Name
		}
	}
	for _, en := range b.entries {
		if e := get(en.VIP, 0); e != nil {
			e.entries = append(e.entries, en)
		}
	}
	var found []census.Socket
	for _, s := range socks {
		if get(s.Local.Addr(), 0) != nil {
			found = append(found, s)
		}
	}
	for _, bs := range d.census.owned(found) {
		e := evs[bs.Local.Addr()]
		e.socks = append(e.socks, bs)
	}
	if len(evs) == 0 {
		return nil
	}

	in := adapter.Installer{Adapter: d.adapter}
	labels := in.Needed() && adapter.Label(d.adapter.Name) != ""
	snap, err := d.scanner.Scan(false)
	if err != nil {
		return fmt.Errorf("start-up cross-check: scan sessions: %w", err)
	}
	d.mu.Lock()
	cfg := d.cfg
	programs := effectivePaths(cfg, d.store.ProgramOverrides())
	d.mu.Unlock()
	holderOf := func(s lease.Session, exe string) (lease.Holder, bool) {
		if cfg.Mode != policy.PerProgram {
			return lease.Holder{Session: s}, true
		}
		if slices.Contains(programs, exe) {
			return lease.Holder{Session: s, Program: exe}, true
		}
		return lease.Holder{}, false
	}
	programOf := func(id bpf.ExeID) (string, bool) {
		for _, p := range programs {
			if x, err := d.kernel.exe(p); err == nil && x == id {
				return p, true
			}
		}
		return "", false
	}

	addrs := make([]netip.Addr, 0, len(evs))
	for a := range evs {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, func(x, y netip.Addr) int { return x.Compare(y) })
	refused := &EvidenceError{Store: d.store.Path()}
	for _, a := range addrs {
		e := evs[a]
		named := map[lease.Holder]uint32{}   // holder → its session's user
		others := map[lease.Session]string{} // sessions whose holder cannot be named, and why
		for _, s := range e.socks {
			for _, o := range s.owners {
				if !o.Session.Valid() {
					continue
				}
				if h, ok := holderOf(o.Session, o.Exe); ok {
					named[h] = o.SessionUID
				} else {
					others[o.Session] = fmt.Sprintf("pid %d of session %s runs %s, not a listed program", o.pid, o.Session, o.Exe)
				}
			}
		}
		// A listed program's child that inherited its sockets (a shell it
		// ran) is that holder's, not another one.
		for h := range named {
			delete(others, h.Session)
		}
		unnamed := ""
		for _, why := range others {
			unnamed = why
		}
		liveEntry := false
		for _, en := range e.entries {
			sess := lease.Session{Kind: lease.KindAudit, ID: en.Session}
			info, alive := snap.Sessions[sess]
			if !alive {
				continue // stale: reconcile drops it
			}
			liveEntry = true
			h, ok := lease.Holder{Session: sess}, true
			if !en.Exe.IsZero() {
				var prog string
				if prog, ok = programOf(en.Exe); ok {
					h.Program = prog
				}
			}
			if !ok || (cfg.Mode == policy.PerProgram) != h.PerProgram() {
				unnamed = fmt.Sprintf("the kernel map entry of session %s names no holder of the current mode and program list", sess)
				continue
			}
			named[h] = info.UID
		}
		// A label or a live map entry says the address is some holder's
		// VIP now. Where labels cannot be seen (a loopback adapter, an
		// interface name too long for one) a socket has to do.
		current := e.label != "" || liveEntry
		switch {
		case len(named) == 1 && unnamed == "" && (current || !labels):
			h, uid := only(named)
			if other, ok := hasLease[h]; ok {
				if !current {
					// Its old VIP, released while a program kept sockets
					// on it: nobody's now, and out of the pool until they
					// close (the pre-grant check).
					d.log.Warn("pool address bound by a holder that has another VIP: kept out of the pool while the sockets are open",
						"vip", a.String(), "holder", h.Key(), "holds", other.String(), "evidence", e.String())
					continue
				}
				e.why = fmt.Sprintf("its holder %s holds %s already", h, other)
				break
			}
			l, err := d.mgr.Claim(h, a, uid)
			if err != nil {
				e.why = err.Error()
				break
			}
			hasLease[h] = a
			d.log.Warn("lease adopted from the kernel's evidence: the store had none for a live holder",
				"holder", h.Key(), "vip", l.Addr.String(), "evidence", e.String())
			continue
		case !current && (labels || len(named) == 0 && unnamed == ""):
			// Sockets only, and no holder's VIP now: either the adapter
			// carries labels and this address has none (a release left
			// sockets behind), or only processes in no session hold it
			// (a service bound to every local address). The pre-grant
			// check keeps it out of the pool while they are open.
			if len(e.socks) > 0 {
				d.log.Warn("pool address in use though no VIP: kept out of the pool while the sockets are open",
					"vip", a.String(), "evidence", e.String())
			}
			continue
		case len(named) > 1:
			hs := make([]string, 0, len(named))
			for h := range named {
				hs = append(hs, h.Key())
			}
			slices.Sort(hs)
			e.why = "several holders use it: " + strings.Join(hs, ", ")
		case unnamed != "":
			e.why = unnamed
		default:
			e.why = "no process of a live session holds a socket on it, so its holder is unknown"
		}
		refused.Addresses = append(refused.Addresses, e.String())
		if e.label != "" && len(e.socks) == 0 {
			bits := cmp.Or(e.bits, 32)
			refused.Labelled = append(refused.Labelled, fmt.Sprintf("ip addr del %s/%d dev %s", a, bits, e.label))
		}
	}
	if len(refused.Addresses) > 0 {
		return refused
	}
	return nil
}

func only(m map[lease.Holder]uint32) (lease.Holder, uint32) {
	for h, uid := range m {
		return h, uid
	}
	return lease.Holder{}, 0
}

// IsEvidence reports whether err is the start-up cross-check's refusal.
func IsEvidence(err error) bool {
	var e *EvidenceError
	return errors.As(err, &e)
}
