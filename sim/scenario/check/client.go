package check

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ClientExpect is what each client of a scenario's client entry must show.
type ClientExpect struct {
	// Source is vip (the VIP ipvirtctl reports for its session or
	// program), mip (the machine IP) or none (no connection was made).
	Source string `yaml:"source"`
	// Verdict is accepted, refused (the server saw a duplicate address),
	// denied (connect failed with EACCES/EPERM) or bind-failed.
	Verdict string `yaml:"verdict"`
	// Errno, when set, is the error name the client must have seen.
	Errno string `yaml:"errno"`
}

// Validate is called when the file is loaded.
func (x *ClientExpect) Validate() error {
	if !slices.Contains([]string{"", "vip", "mip", "none"}, x.Source) {
		return fmt.Errorf("expect.source %q: want vip, mip or none", x.Source)
	}
	if !slices.Contains([]string{"", "accepted", "refused", "denied", "bind-failed"}, x.Verdict) {
		return fmt.Errorf("expect.verdict %q: want accepted, refused, denied or bind-failed", x.Verdict)
	}
	return nil
}

// Clients judges the clients' own expectations: one outcome per
// expectation of an entry, covering every client the entry started.
func Clients(env *Env) []Outcome {
	var out []Outcome
	add := func(ok bool, what, got string) { out = append(out, Outcome{OK: ok, What: what, Got: got}) }
	var order []*ClientExpect
	byEntry := map[*ClientExpect][]*ClientResult{}
	for _, c := range env.Clients {
		if _, ok := byEntry[c.Expect]; !ok {
			order = append(order, c.Expect)
		}
		byEntry[c.Expect] = append(byEntry[c.Expect], c)
	}
	for _, x := range order {
		cs := byEntry[x]
		entry := cs[0].Group + "/" + cs[0].Name
		if x.Source != "" {
			var bad []string
			for _, c := range cs {
				if !sourceIs(c, x.Source, machineIP(env, c)) {
					bad = append(bad, fmt.Sprintf("%s left from %s (VIP reported: %s)%s", c.Session, addrOrNone(c.Source), addrOrNone(c.VIP), c.why()))
				}
			}
			add(len(bad) == 0, fmt.Sprintf("%s leaves from %s", entry, sourceWords(x.Source)), strings.Join(bad, "; "))
		}
		if x.Verdict != "" {
			var bad []string
			for _, c := range cs {
				if c.Verdict != x.Verdict {
					bad = append(bad, fmt.Sprintf("%s: %s%s", c.Session, c.Verdict, c.why()))
				}
			}
			add(len(bad) == 0, fmt.Sprintf("%s is %s", entry, x.Verdict), strings.Join(bad, "; "))
		}
		if x.Errno != "" {
			var bad []string
			for _, c := range cs {
				if c.Errno != x.Errno {
					bad = append(bad, fmt.Sprintf("%s: errno %s", c.Session, orDash(c.Errno)))
				}
			}
			add(len(bad) == 0, fmt.Sprintf("%s fails with %s", entry, x.Errno), strings.Join(bad, "; "))
		}
	}
	return out
}

func sourceIs(c *ClientResult, want string, mip netip.Addr) bool {
	switch want {
	case "vip":
		return c.Source.IsValid() && c.VIP.IsValid() && c.Source.Addr() == c.VIP && c.VIP != mip
	case "mip":
		return c.Source.IsValid() && c.Source.Addr() == mip
	case "none":
		return !c.Source.IsValid()
	}
	return false
}

func sourceWords(s string) string {
	switch s {
	case "vip":
		return "its own VIP"
	case "mip":
		return "the machine IP"
	}
	return "nowhere (no connection)"
}

func addrOrNone[T interface {
	IsValid() bool
	String() string
}](a T) string {
	if !a.IsValid() {
		return "none"
	}
	return a.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
