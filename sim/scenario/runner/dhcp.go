package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ipvirt/ipvirt/sim/daemonproc"
	"github.com/ipvirt/ipvirt/sim/scenario"
	"github.com/ipvirt/ipvirt/sim/scenario/check"
	"github.com/ipvirt/ipvirt/sim/scenario/topo"
)

// dhcpProc is a synthetic DHCP server running as `ipvirt-sim dhcp-server`
// on its topology host, so that it lives in that host's namespace.
type dhcpProc struct {
	spec   *scenario.DHCPServer
	cmd    *exec.Cmd
	status string // the JSON status file the server writes
	Listen netip.AddrPort
	logs   *daemonproc.LockedBuffer
	done   chan struct{}
}

func (r *fileRun) startDHCP(ctx context.Context) error {
	placer, placed := r.topo.(topo.DHCPPlacer)
	for i := range r.f.DHCPServers {
		spec := &r.f.DHCPServers[i]
		knobs := string(spec.Knobs)
		if !spec.Placed {
			iface, listen := "", "127.0.0.1:0"
			if placed {
				var err error
				host := spec.Host
				if host == "" {
					host = fmt.Sprintf("dhcp%d", i) // one server per host
				}
				if iface, listen, err = placer.DHCPServer(host); err != nil {
					return fmt.Errorf("dhcp server %s: %w", spec.Name, err)
				}
			}
			knobs += fmt.Sprintf("\nlisten: %q\n", listen)
			if iface != "" {
				knobs += fmt.Sprintf("interface: %q\n", iface)
			}
		}
		dir := filepath.Join(r.work, "dhcp-"+spec.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		cfgPath := filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(cfgPath, []byte(knobs), 0o644); err != nil {
			return err
		}
		p := &dhcpProc{spec: spec, status: filepath.Join(dir, "status.json"), logs: &daemonproc.LockedBuffer{}, done: make(chan struct{})}
		host := spec.Host
		if host == "" {
			host = fmt.Sprintf("dhcp%d", i)
		}
		argv := r.topo.Wrap(host, []string{r.bins.Sim, "dhcp-server", "-config", cfgPath, "-status", p.status})
		p.cmd = exec.Command(argv[0], argv[1:]...)
		p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL} // dies with a killed simulator
		if err := p.cmd.Start(); err != nil {
			return fmt.Errorf("dhcp server %s: %w", spec.Name, err)
		}
		go func() { p.cmd.Wait(); close(p.done) }()
		r.dhcp = append(r.dhcp, p)
		st, err := p.waitStatus(ctx, 0)
		if err != nil {
			return fmt.Errorf("dhcp server %s did not start: %w\n%s", spec.Name, err, p.logs.String())
		}
		if p.Listen, err = netip.ParseAddrPort(st.Listen); err != nil {
			return fmt.Errorf("dhcp server %s: status listen %q: %w", spec.Name, st.Listen, err)
		}
		r.opts.Log.Debug("dhcp server up", "name", spec.Name, "listen", p.Listen)
	}
	return nil
}

// dhcpStatus is the part of sim/dhcpserver's status file the runner and
// the dhcp check use.
type dhcpStatus struct {
	Seq      uint64         `json:"seq"`
	Listen   string         `json:"listen"`
	Counters map[string]int `json:"counters"`
	Leases   []struct {
		Client string
		Addr   string
	} `json:"leases"`
}

// waitStatus waits for a status file later than seq (the server numbers
// them; SIGUSR1 asks for a fresh one).
func (p *dhcpProc) waitStatus(ctx context.Context, seq uint64) (*dhcpStatus, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		if st, err := p.readStatus(); err != nil {
			return nil, err
		} else if st != nil && st.Seq > seq {
			return st, nil
		}
		select {
		case <-p.done:
			return nil, errors.New("exited")
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, errors.New("no status after 15s")
		}
	}
}

// readStatus returns the last status file, nil if there is none yet. The
// server renames each file into place, so a read never sees half of one.
func (p *dhcpProc) readStatus() (*dhcpStatus, error) {
	b, err := os.ReadFile(p.status)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st dhcpStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("status %s: %w", p.status, err)
	}
	return &st, nil
}

// Status asks the server for its counters and leases now.
func (p *dhcpProc) Status(ctx context.Context) (*dhcpStatus, error) {
	var seq uint64
	if st, err := p.readStatus(); err != nil {
		return nil, err
	} else if st != nil {
		seq = st.Seq
	}
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return nil, fmt.Errorf("dhcp server %s: %w", p.spec.Name, err)
	}
	return p.waitStatus(ctx, seq)
}

func (p *dhcpProc) Name() string { return p.spec.Name }

// Counters is for the dhcp check (check.DHCPServer).
func (p *dhcpProc) Counters(ctx context.Context) (map[string]int, int, error) {
	st, err := p.Status(ctx)
	if err != nil {
		return nil, 0, err
	}
	return st.Counters, len(st.Leases), nil
}

func (p *dhcpProc) stop() {
	p.cmd.Process.Signal(syscall.SIGCONT) // a frozen server cannot exit
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

func (r *fileRun) dhcpServers() []check.DHCPServer {
	var out []check.DHCPServer
	for _, p := range r.dhcp {
		out = append(out, p)
	}
	return out
}

func (r *fileRun) dhcpByName(name string) *dhcpProc {
	for _, p := range r.dhcp {
		if p.spec.Name == name {
			return p
		}
	}
	return nil
}

// dhcpDaemonKeys points ipvirtd at the first DHCP server in relay mode when
// the topology has no broadcast domain for it (loopback), unless the
// scenario says where the server is itself.
func (r *fileRun) dhcpDaemonKeys(cfg map[string]any) {
	if len(r.dhcp) == 0 {
		return
	}
	if _, placed := r.topo.(topo.DHCPPlacer); placed {
		return
	}
	if src, ok := cfg["source"]; ok && src != "dhcp" {
		return
	}
	d, _ := cfg["dhcp"].(map[string]any)
	d = merge(map[string]any{}, d)
	if _, ok := d["server"]; ok {
		return
	}
	first := r.dhcp[0]
	d["server"] = first.Listen.String()
	d["server_port"] = int(first.Listen.Port())
	if _, ok := d["relay_address"]; !ok {
		// giaddr: an address in the subnet the VIPs come from.
		bits := first.spec.Config.PrefixLen
		if bits == 0 {
			bits = 24 // sim/dhcpserver's default
		}
		if pfx, err := first.spec.Config.RangeStart.Prefix(bits); err == nil {
			d["relay_address"] = pfx.Addr().Next().String()
		}
	}
	if _, ok := d["arp_probe"]; !ok {
		d["arp_probe"] = false // loopback has no ARP
	}
	cfg["dhcp"] = d
}
