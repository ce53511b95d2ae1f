package check

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/scenario/strictyaml"
	"github.com/ipvirt/ipvirt/sim/scenario/topo"
	"github.com/ipvirt/ipvirt/sim/wirecheck"
)

// LANCapturer is implemented by topologies with a LAN to capture on.
type LANCapturer interface {
	// DoLAN runs fn in the namespace where every host's frames enter the
	// LAN exactly once.
	DoLAN(fn func() error) error
	// SessionMACs are the session host's adapters' MAC addresses.
	SessionMACs() []net.HardwareAddr
}

// wireSpec is `expect: {wire: {...}}`: checks on what crossed the LAN,
// captured from the phase's first session to its end.
type wireSpec struct {
	// SYNFromVIP: each virtualized client's TCP SYN to the database server
	// carries the VIP ipvirtctl reports for it.
	SYNFromVIP bool `yaml:"syn_from_vip"`
	// DHCPClientIDs: each reported lease was requested on the wire by the
	// session host under the client id ipvirtctl reports for it.
	DHCPClientIDs bool `yaml:"dhcp_client_ids"`
	// ARPFromSession: every ARP packet that claims a reported VIP (a reply,
	// or a request with it as sender) comes from the session host's adapter.
	ARPFromSession bool `yaml:"arp_from_session"`
	// QuietAfterRelease: after the session host RELEASEs an address, no
	// packet uses it until a server leases it out again.
	QuietAfterRelease bool `yaml:"quiet_after_release"`
	// OneHostPerAddress (a farm): no source address is used by two session
	// hosts at once; see oneHostOnWire.
	OneHostPerAddress bool `yaml:"one_host_per_address"`
}

func init() {
	Register("wire", func(spec *yaml.Node, at Site) (Check, error) {
		var s wireSpec
		err := strictyaml.Decode(spec, &s)
		if err == nil && !s.SYNFromVIP && !s.DHCPClientIDs && !s.ARPFromSession && !s.QuietAfterRelease && !s.OneHostPerAddress {
			err = strictyaml.Errorf(spec.Line, "wire: no check enabled (syn_from_vip, dhcp_client_ids, arp_from_session, quiet_after_release, one_host_per_address)")
		}
		if err != nil {
			return nil, fmt.Errorf("%s: expect.wire: %w", at.Phase, err)
		}
		return s, nil
	})
}

func (s wireSpec) Begin(_ context.Context, env *Env) (func(context.Context) []Outcome, error) {
	lan, ok := env.Topology.(LANCapturer)
	if !ok {
		return nil, errors.New("wire checks need a topology with a LAN (kind: netns)")
	}
	capture, err := wirecheck.Start(lan.DoLAN)
	if err != nil {
		return nil, err
	}
	return func(context.Context) []Outcome {
		frames := capture.Stop()
		w := &wireRun{env: env, frames: frames, macs: lan.SessionMACs()}
		var out []Outcome
		if s.SYNFromVIP {
			out = append(out, w.synFromVIP())
		}
		if s.DHCPClientIDs {
			out = append(out, w.dhcpClientIDs())
		}
		if s.ARPFromSession {
			out = append(out, w.arpFromSession())
		}
		if s.QuietAfterRelease {
			out = append(out, w.quietAfterRelease())
		}
		if s.OneHostPerAddress {
			out = append(out, w.oneHostOnWire())
		}
		return out
	}, nil
}

type wireRun struct {
	env    *Env
	frames []wirecheck.Frame
	macs   []net.HardwareAddr
}

func (w *wireRun) fromSession(mac net.HardwareAddr) bool {
	return slices.ContainsFunc(w.macs, func(m net.HardwareAddr) bool { return m.String() == mac.String() })
}

// fromHostOf says whether mac is the adapter of the host c ran on: in a
// farm the client's own host's, elsewhere the session host's.
func (w *wireRun) fromHostOf(c *ClientResult, mac net.HardwareAddr) bool {
	if f, ok := w.env.Topology.(topo.Farm); ok && c.Host != "" {
		return f.MAC(c.Host).String() == mac.String()
	}
	return w.fromSession(mac)
}

// verdict turns a list of problems into an outcome; at most three are named.
func verdict(what string, checked int, problems []string) Outcome {
	o := Outcome{OK: len(problems) == 0 && checked > 0, What: what}
	switch {
	case checked == 0:
		o.Got = "nothing to check: no such traffic was captured"
	case len(problems) > 3:
		o.Got = strings.Join(problems[:3], "; ") + fmt.Sprintf("; and %d more", len(problems)-3)
	case len(problems) > 0:
		o.Got = strings.Join(problems, "; ")
	default:
		o.Got = fmt.Sprintf("%d checked", checked)
	}
	return o
}

func (w *wireRun) synFromVIP() Outcome {
	syns := wirecheck.SYNs(w.frames)
	var problems []string
	checked := 0
	for _, c := range w.env.Clients {
		if !c.VIP.IsValid() || !c.Source.IsValid() {
			continue
		}
		checked++
		// The connection the server accepted from c.Source: its SYN must be
		// on the wire, sent by the session host, from the reported VIP.
		i := slices.IndexFunc(syns, func(s wirecheck.SYN) bool {
			return s.Src == c.Source && s.Dst.Addr() == w.env.Topology.ServerAddr()
		})
		switch {
		case i < 0:
			problems = append(problems, fmt.Sprintf("%s: no SYN from %s on the wire", c.Session, c.Source))
		case !w.fromHostOf(c, syns[i].SrcMAC):
			problems = append(problems, fmt.Sprintf("%s: SYN %s > %s sent by %s, not the session host", c.Session, syns[i].Src, syns[i].Dst, syns[i].SrcMAC))
		case syns[i].Src.Addr() != c.VIP:
			problems = append(problems, fmt.Sprintf("%s: SYN %s > %s carries %s, want VIP %s",
				c.Session, syns[i].Src, syns[i].Dst, syns[i].Src.Addr(), c.VIP))
		}
	}
	return verdict("wire: every virtualized client's SYN carries its VIP", checked, problems)
}

func (w *wireRun) dhcpClientIDs() Outcome {
	msgs := wirecheck.DHCP(w.frames)
	var problems []string
	checked := 0
	check := func(who, vip, cid string) {
		if vip == "" || cid == "" {
			return
		}
		checked++
		a, _ := netip.ParseAddr(vip)
		ok := slices.ContainsFunc(msgs, func(m wirecheck.DHCPMsg) bool {
			return m.Type == "REQUEST" && w.fromSession(m.SrcMAC) && hex.EncodeToString(m.ClientID) == cid &&
				(m.RequestedIP == a || m.ClientIP == a)
		})
		if !ok {
			var seen []string
			for _, m := range msgs {
				if m.Type == "REQUEST" && (m.RequestedIP == a || m.ClientIP == a) {
					seen = append(seen, "client-id "+hex.EncodeToString(m.ClientID))
				}
			}
			problems = append(problems, fmt.Sprintf("%s: no REQUEST for %s with client-id %s from the session host (REQUESTs for it: %v)", who, vip, cid, seen))
		}
	}
	for _, row := range w.env.Report {
		check(row.Session, row.VIP, row.ClientID)
		for _, p := range row.Programs {
			check(row.Session+" "+p.Program, p.VIP, p.ClientID)
		}
	}
	return verdict("wire: every reported lease was requested under the client id ipvirtctl reports", checked, problems)
}

func (w *wireRun) arpFromSession() Outcome {
	vips := map[netip.Addr]bool{}
	for _, row := range w.env.Report {
		if a, err := netip.ParseAddr(row.VIP); err == nil {
			vips[a] = true
		}
		for _, p := range row.Programs {
			if a, err := netip.ParseAddr(p.VIP); err == nil {
				vips[a] = true
			}
		}
	}
	var problems []string
	checked := 0
	for _, a := range wirecheck.ARPs(w.frames) {
		if !vips[a.SenderIP] {
			continue
		}
		checked++
		if !w.fromSession(a.EthSrc) || !w.fromSession(a.SenderMAC) {
			kind := "request"
			if a.Reply {
				kind = "reply"
			}
			problems = append(problems, fmt.Sprintf("ARP %s: %s is-at %s (ethernet source %s), not the session host", kind, a.SenderIP, a.SenderMAC, a.EthSrc))
		}
	}
	return verdict("wire: ARP for VIPs comes only from the session host's adapter", checked, problems)
}

func (w *wireRun) quietAfterRelease() Outcome {
	msgs := wirecheck.DHCP(w.frames)
	var problems []string
	checked := 0
	for _, rel := range msgs {
		if rel.Type != "RELEASE" || !w.fromSession(rel.SrcMAC) || !rel.ClientIP.IsValid() {
			continue
		}
		checked++
		// Until a server hands the address out again, nobody may use it.
		until := time.Time{}
		for _, m := range msgs {
			if m.Type == "ACK" && m.YourIP == rel.ClientIP && m.At.After(rel.At) {
				until = m.At
				break
			}
		}
		for _, f := range wirecheck.UsesOf(w.frames, rel.ClientIP, rel.At) {
			if !until.IsZero() && f.At.After(until) {
				break
			}
			problems = append(problems, fmt.Sprintf("%s used after its RELEASE at %s: %s", rel.ClientIP, rel.At.Format("15:04:05.000000"), wirecheck.Describe(f)))
		}
	}
	return verdict("wire: nothing uses a released address", checked, problems)
}
