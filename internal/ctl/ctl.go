// Package ctl is ipvirtctl: the administrator's and user's view of ipvirtd
// over its control socket.
package ctl

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ipvirt/ipvirt/backend/client"
)

const usage = `Usage: ipvirtctl [--socket PATH] [-o table|json] COMMAND [ARGS]

Commands:
  whoami                  what address this process gets (VIP, machine IP or denied)
  status                  pool size, free addresses, leases, source health
  sessions                every live session and its VIP (only your own unless
                          you are root or an administrator)
  sessions --farm         every VIP of every host of an etcd farm (source: etcd)
  programs list           the per-program list
  programs add PATH       add a program (root and administrators)
  programs remove PATH    remove a program (root and administrators)
  release SESSION         release every VIP of a session now (root and administrators)
  session open|close      register this login session with ipvirtd, or unregister
                          it (root; for pam_exec, see session_trust: pam)
  run [--] CMD [ARGS...]  run a command with the LD_PRELOAD interceptor loaded

The daemon's socket is --socket, else $IPVIRT_SOCKET, else /run/ipvirt/ipvirt.sock.
'ipvirtctl COMMAND --help' describes one command. Exit status: 0 on success,
1 when the daemon refuses or cannot be reached, 2 on a usage error.
`

// Main runs ipvirtctl with args (without the program name) and returns the
// exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	g := &globals{out: stdout, errw: stderr, timeout: defaultTimeout}
	fs := flag.NewFlagSet("ipvirtctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	g.register(fs)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	run, ok := commands[cmd]
	if !ok {
		fmt.Fprintf(stderr, "ipvirtctl: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	return run(g, rest)
}

// defaultTimeout is how long ipvirtctl waits for the daemon unless told.
const defaultTimeout = 5 * time.Second

type globals struct {
	socket  string
	output  string
	timeout time.Duration
	out     io.Writer
	errw    io.Writer
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.socket, "socket", g.socket, "daemon socket `path` (default $IPVIRT_SOCKET or /run/ipvirt/ipvirt.sock)")
	fs.StringVar(&g.output, "o", g.output, "output `format`: table or json")
	// The current value is the default, as for the others: a command's
	// flags are registered again on its own set, and --timeout given
	// before the command must survive that.
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "how long to wait for the daemon")
}

// subFlags parses a command's arguments, which may repeat the global flags.
func (g *globals) subFlags(name, argsUsage, help string, args []string) (*flag.FlagSet, bool) {
	fs := flag.NewFlagSet("ipvirtctl "+name, flag.ContinueOnError)
	fs.SetOutput(g.errw)
	g.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(g.errw, "Usage: ipvirtctl %s [--socket PATH] [-o table|json] %s\n\n%s\n\nOptions:\n", name, argsUsage, help)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, false
	}
	return fs, true
}

func (g *globals) dial() (*client.Client, error) {
	return client.Dial(client.SocketPath(g.socket), g.timeout)
}

func (g *globals) fail(err error) int {
	fmt.Fprintln(g.errw, "ipvirtctl:", err)
	return 1
}

func (g *globals) json() (bool, error) {
	switch g.output {
	case "", "table":
		return false, nil
	case "json":
		return true, nil
	default:
		return false, fmt.Errorf("-o %q: want table or json", g.output)
	}
}

func (g *globals) printJSON(v any) int {
	enc := json.NewEncoder(g.out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return g.fail(err)
	}
	return 0
}

func (g *globals) table() *tabwriter.Writer {
	return tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

func since(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// usageError reports a bad invocation (exit 2).
func (g *globals) usageError(format string, args ...any) int {
	fmt.Fprintf(g.errw, "ipvirtctl: "+format+"\n", args...)
	return 2
}

// check resolves the output format or returns the usage error status.
func (g *globals) check() (asJSON bool, status int) {
	j, err := g.json()
	if err != nil {
		return false, g.usageError("%v", err)
	}
	return j, -1
}
