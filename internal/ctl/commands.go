package ctl

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/ipvirt/ipvirt/backend/api"

	"github.com/ipvirt/ipvirt/backend/client"
)

var commands map[string]func(*globals, []string) int

func init() {
	commands = map[string]func(*globals, []string) int{
		"whoami":   whoami,
		"status":   status,
		"sessions": sessions,
		"programs": programs,
		"release":  release,
		"session":  session,
		"run":      run,
	}
}

// withClient parses a command's flags, dials, and calls fn; it returns the
// exit status.
func withClient(g *globals, name, argsUsage, help string, args []string, nargs int,
	fn func(c *client.Client, asJSON bool, args []string) int) int {
	fs, ok := g.subFlags(name, argsUsage, help, args)
	if !ok {
		if fs == nil && len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			return 0
		}
		return 2
	}
	if fs.NArg() != nargs {
		return g.usageError("%s takes %d argument(s) (%s), got %d; see ipvirtctl %s --help", name, nargs, orDash(argsUsage), fs.NArg(), name)
	}
	asJSON, st := g.check()
	if st >= 0 {
		return st
	}
	c, err := g.dial()
	if err != nil {
		return g.fail(err)
	}
	defer c.Close()
	return fn(c, asJSON, fs.Args())
}

func whoami(g *globals, args []string) int {
	return withClient(g, "whoami", "", "Asks ipvirtd what address this process would get, and prints it:\n"+
		"the VIP with its mask, MIP (the machine IP) or denied with the reason.", args, 0,
		func(c *client.Client, asJSON bool, _ []string) int {
			r, err := c.Whoami()
			if err != nil {
				return g.fail(err)
			}
			if asJSON {
				return g.printJSON(r)
			}
			switch r.Result {
			case "vip":
				fmt.Fprintf(g.out, "VIP %s/%d (mask %s) for %s\n", r.VIP, r.Prefix, r.Mask, r.Holder)
			case "mip":
				fmt.Fprintf(g.out, "MIP %s: %s\n", r.MachineIP, r.Reason)
			default:
				fmt.Fprintf(g.out, "denied: %s\n", r.Reason)
			}
			fmt.Fprintf(g.out, "pid %d, user %s (uid %d), session %s, program %s\n", r.PID, r.User, r.SessionUID, r.Session, r.Exe)
			return 0
		})
}

func status(g *globals, args []string) int {
	return withClient(g, "status", "", "Shows the daemon's state: mode, pool size and free addresses, leases, source health.", args, 0,
		func(c *client.Client, asJSON bool, _ []string) int {
			s, err := c.Status()
			if err != nil {
				return g.fail(err)
			}
			if asJSON {
				return g.printJSON(s)
			}
			w := g.table()
			enabled := "enabled"
			if !s.Enabled {
				enabled = "DISABLED (everyone gets the machine IP)"
			}
			pool := "unknown (DHCP)"
			if s.PoolSize >= 0 {
				pool = fmt.Sprintf("%d addresses, %d free, %d used", s.PoolSize, s.PoolFree, s.PoolSize-s.PoolFree)
			}
			health := "healthy"
			if !s.Healthy {
				health = "UNHEALTHY: " + s.Health
			}
			store := "healthy"
			if !s.StoreHealthy {
				store = "UNHEALTHY: " + s.StoreHealth
			}
			for _, row := range [][2]string{
				{"ipvirtd", s.Version + ", up since " + since(s.Started)},
				{"virtualization", enabled + ", " + s.Mode + " mode"},
				{"adapter", s.Adapter + " (machine IP " + s.MachineIP + ")"},
				{"source", s.Source + ", " + health},
				{"interceptor", s.Interceptor},
				{"session trust", fmt.Sprintf("%s, %d sessions registered by PAM", orDash(s.SessionTrust), s.Registered)},
				{"pool", pool},
				{"lease store", store},
				{"leases", fmt.Sprintf("%d active, %d pending", s.Leases, s.Pending)},
				{"sessions", fmt.Sprint(s.Sessions)},
				{"programs", fmt.Sprint(s.Programs)},
				{"on exhausted", s.OnExhausted},
				{"duplicate VIPs", fmt.Sprint(s.DuplicateVIP)},
				{"config", s.Config},
			} {
				fmt.Fprintf(w, "%s:\t%s\n", row[0], row[1])
			}
			w.Flush()
			return 0
		})
}

func sessions(g *globals, args []string) int {
	if len(args) > 0 && (args[0] == "--farm" || args[0] == "-farm") {
		return farm(g, args[1:])
	}
	return withClient(g, "sessions", "", "Lists every live login session with its VIP (or MIP/denied and why), its\n"+
		"per-program VIPs and since when. Root and administrators see every session;\nother users see their own.\n"+
		"With --farm (source: etcd): every VIP of every host of the farm, from etcd.", args, 0,
		func(c *client.Client, asJSON bool, _ []string) int {
			list, err := c.Sessions()
			if err != nil {
				return g.fail(err)
			}
			if asJSON {
				if list == nil {
					list = []api.SessionReport{}
				}
				return g.printJSON(list)
			}
			w := g.table()
			fmt.Fprintln(w, "SESSION\tUSER\tMODE\tADDRESS\tPROGRAM VIPS\tSINCE\tPROCS\tNOTE")
			for _, s := range list {
				addr := s.State
				if s.VIP != "" {
					addr = s.VIP
				}
				var progs []string
				for _, p := range s.Programs {
					v := p.VIP
					if v == "" {
						v = p.State
					}
					progs = append(progs, p.Program+"="+v)
				}
				note := s.Reason
				if s.Ending {
					note = strings.TrimSpace("ending (grace period) " + note)
				}
				if s.RemoteHost != "" {
					note = strings.TrimSpace("from " + s.RemoteHost + " " + note)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", s.Session, s.User, s.Mode, addr,
					orDash(strings.Join(progs, " ")), since(s.Since), s.Processes, orDash(note))
			}
			w.Flush()
			return 0
		})
}

func farm(g *globals, args []string) int {
	return withClient(g, "sessions --farm", "", "Lists every VIP in use on any host of the etcd farm (source: etcd), as etcd\n"+
		"has them now: host, holder, user and since when. Root and administrators see\nevery VIP; other users their own.", args, 0,
		func(c *client.Client, asJSON bool, _ []string) int {
			list, err := c.Farm()
			if err != nil {
				return g.fail(err)
			}
			if asJSON {
				if list == nil {
					list = []api.FarmLease{}
				}
				return g.printJSON(list)
			}
			w := g.table()
			fmt.Fprintln(w, "VIP\tHOST\tHOLDER\tUID\tSINCE\tNOTE")
			for _, l := range list {
				note := ""
				if l.Mine {
					note = "this host"
				}
				if l.Bad != "" {
					note = "unreadable record: " + l.Bad
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", l.VIP, orDash(l.Host), orDash(l.Holder), l.UID, since(l.Since), orDash(note))
			}
			w.Flush()
			return 0
		})
}

func programs(g *globals, args []string) int {
	const help = "Shows or changes the per-program list at run time (persisted across restarts).\n" +
		"  list          show the list, and whether each entry comes from the config file or ipvirtctl\n" +
		"  add PATH      virtualize PATH (absolute path of the executable)\n" +
		"  remove PATH   stop virtualizing PATH; running instances keep their VIPs until they exit"
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			fmt.Fprintf(g.errw, "Usage: ipvirtctl programs list|add PATH|remove PATH\n\n%s\n", help)
			return 0
		}
		return g.usageError("programs needs list, add PATH or remove PATH; see ipvirtctl programs --help")
	}
	sub, rest := args[0], args[1:]
	show := func(c *client.Client, asJSON bool, list []api.ProgramEntry) int {
		if asJSON {
			if list == nil {
				list = []api.ProgramEntry{}
			}
			return g.printJSON(list)
		}
		w := g.table()
		fmt.Fprintln(w, "PROGRAM\tFROM\tWARNING")
		for _, p := range list {
			fmt.Fprintf(w, "%s\t%s\t%s\n", p.Path, p.From, orDash(p.Warning))
		}
		w.Flush()
		return 0
	}
	switch sub {
	case "list":
		return withClient(g, "programs list", "", help, rest, 0, func(c *client.Client, asJSON bool, _ []string) int {
			list, err := c.Programs()
			if err != nil {
				return g.fail(err)
			}
			return show(c, asJSON, list)
		})
	case "add", "remove":
		return withClient(g, "programs "+sub, "PATH", help, rest, 1, func(c *client.Client, asJSON bool, a []string) int {
			var list []api.ProgramEntry
			var err error
			if sub == "add" {
				list, err = c.AddProgram(a[0])
			} else {
				list, err = c.RemoveProgram(a[0])
			}
			if err != nil {
				return g.fail(err)
			}
			for _, p := range list {
				if sub == "add" && p.Path == filepath.Clean(a[0]) && p.Warning != "" {
					fmt.Fprintf(g.errw, "ipvirtctl: warning: %s\n", p.Warning)
				}
			}
			return show(c, asJSON, list)
		})
	default:
		return g.usageError("programs: unknown subcommand %q (want list, add or remove)", sub)
	}
}

func release(g *globals, args []string) int {
	return withClient(g, "release", "SESSION", "Releases every VIP of a session now, without waiting for its processes to\n"+
		"end. SESSION is an audit session id (42) or the form shown by 'ipvirtctl\nsessions' (a:42, p:1234). Root and administrators only.", args, 1,
		func(c *client.Client, asJSON bool, a []string) int {
			rel, err := c.Release(a[0])
			if err != nil {
				return g.fail(err)
			}
			if asJSON {
				return g.printJSON(rel)
			}
			for _, r := range rel {
				fmt.Fprintf(g.out, "released %s from %s\n", r.VIP, r.Holder)
			}
			return 0
		})
}
