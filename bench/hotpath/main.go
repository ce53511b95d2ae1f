// Command hotpath measures what libipvirt.so adds to a call in user space,
// beside the force_bind-style floor (bench/connectloop/forcebind.c), with
// the kernel left out: connectloop runs with bench/connectloop/nosys.so
// behind the preload, which answers the socket calls of IP sockets without
// a system call, so that what is counted and timed is the preloads' own
// work and libc's, free of the kernel's cost and of the machine's noise
// (issue 13: the library at the floor's cost plus a few dozen
// instructions). Three loops: socket + connect + close (TCP), socket +
// sendto + close (UDP, a fresh unconnected socket each time), and sendto
// on one socket bound already; the library answers from a cached VIP
// answer, which bench/connectloop/noopd gives it. For each, per call:
// instructions, counted by valgrind's callgrind (the difference of two
// loop lengths, so that start-up cancels out; skipped without valgrind),
// and ns, the median over interleaved rounds, with warm caches and with
// nosys.so sweeping them at every close (-sweep KiB), as a real call's
// work in the kernel does (then nosys.so times the calls between its
// sweeps, plus the loop's own overhead, the same for every variant). Every loop reports the address its socket was
// bound to, which must be the VIP under the floor and the library. -ref
// LIB adds another build of the library (an earlier commit's, say). Needs
// neither root nor a daemon; without valgrind it only times (with
// CI=true, it fails).
//
//	go run ./bench/hotpath [-rounds 5] [-n 200000] [-sweep 8192] [-ref LIB]
package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/ipvirt/ipvirt/backend/wire"
	"github.com/ipvirt/ipvirt/bench/internal/benchkit"
)

// 127.84/16 is this bench's alone; with nosys.so nothing is bound to it.
var vip = netip.MustParseAddr("127.84.0.10")

const (
	// callgrind's two loop lengths: their difference is counted.
	shortN, longN = 1000, 11000
	// The swept loops make this many calls per n of the warm ones.
	sweptPer = 400
)

// loop is one of connectloop's loops.
type loop struct {
	mode, what string
	swept      bool // a close per call, where nosys.so sweeps
}

var loops = []loop{
	{"loop", "socket + connect + close (TCP)", true},
	{"udploop", "socket + sendto + close (UDP, unconnected)", true},
	{"sendloop", "sendto on a UDP socket bound already", false},
}

// variant is a preload (or none) in front of nosys.so.
type variant struct {
	name  string
	env   []string
	floor bool // the yardstick the library's rows are read against
	lib   bool
	// Per loop: instructions per call, and ns samples warm and swept.
	instr       map[string]float64
	warm, swept map[string][]float64
}

func main() {
	rounds := flag.Int("rounds", 5, "interleaved rounds of the timed loops")
	n := flag.Int("n", 200000, "calls per timed loop with warm caches")
	sweep := flag.Int("sweep", 8192, "KiB read at every close in the swept loops (0: no swept loops)")
	ref := flag.String("ref", "", "another build of libipvirt.so to measure beside this one's (a path)")
	flag.Parse()
	if *rounds < 1 || *n < sweptPer {
		fmt.Fprintf(os.Stderr, "hotpath: -rounds must be at least 1 and -n at least %d\n", sweptPer)
		os.Exit(2)
	}
	if err := run(*rounds, *n, *sweep, *ref); err != nil {
		fmt.Fprintln(os.Stderr, "hotpath:", err)
		os.Exit(1)
	}
}

func run(rounds, n, sweep int, ref string) error {
	work, err := os.MkdirTemp("", "ipvirt-hotpath-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	tools, err := benchkit.Build(work)
	if err != nil {
		return err
	}
	sock, stop, err := startNoop(work, tools.Noopd)
	if err != nil {
		return err
	}
	defer stop()

	pre := func(lib string) string { return "LD_PRELOAD=" + lib + " " + tools.NoSys }
	vs := []*variant{
		{name: "no preload", env: []string{"LD_PRELOAD=" + tools.NoSys}},
		{name: "force_bind floor", env: []string{pre(tools.ForceBind), "FORCEBIND_ADDR=" + vip.String()}, floor: true},
		{name: "libipvirt.so", env: []string{pre(tools.Lib), "IPVIRT_SOCKET=" + sock}, lib: true},
	}
	if ref != "" {
		abs, err := filepath.Abs(ref)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			return fmt.Errorf("-ref: %w", err)
		}
		vs = append(vs, &variant{name: "libipvirt.so -ref build", env: []string{pre(abs), "IPVIRT_SOCKET=" + sock}, lib: true})
	}
	for _, v := range vs {
		v.instr, v.warm, v.swept = map[string]float64{}, map[string][]float64{}, map[string][]float64{}
	}

	valgrind, verr := exec.LookPath("valgrind")
	if verr != nil && os.Getenv("CI") == "true" {
		return fmt.Errorf("CI=true: valgrind not found (Debian package valgrind; scripts/deps.sh installs it)")
	}
	if verr == nil {
		for _, l := range loops {
			for _, v := range vs {
				if v.instr[l.mode], err = instructions(valgrind, tools.Loop, l.mode, v); err != nil {
					return err
				}
			}
		}
	}
	for r := 0; r < rounds; r++ {
		for _, l := range loops {
			for i := range vs {
				v := vs[(i+r)%len(vs)]
				ns, err := timed(tools.Loop, l.mode, n, v, 0)
				if err != nil {
					return err
				}
				v.warm[l.mode] = append(v.warm[l.mode], ns)
				if l.swept && sweep > 0 {
					if ns, err = timed(tools.Loop, l.mode, n/sweptPer, v, sweep); err != nil {
						return err
					}
					v.swept[l.mode] = append(v.swept[l.mode], ns)
				}
			}
		}
		fmt.Fprintf(os.Stderr, "round %d/%d done\n", r+1, rounds)
	}

	fmt.Println("libipvirt.so's own work per call beside the force_bind floor, the kernel left out (nosys.so),")
	fmt.Printf("on a cached VIP answer: instructions (callgrind), ns (median of %d interleaved rounds)\n", rounds)
	if verr != nil {
		fmt.Println("  (instructions not counted: valgrind not found; Debian package valgrind)")
	}
	fmt.Printf("  %-34s %16s %16s %20s\n", "", "instructions", "ns, warm", fmt.Sprintf("ns, %d KiB swept", sweep))
	var floor *variant
	for _, v := range vs {
		if v.floor {
			floor = v
		}
	}
	for _, l := range loops {
		fmt.Printf("  %s:\n", l.what)
		for _, v := range vs {
			cell := func(val, base float64, ok bool, prec int) string {
				if !ok {
					return "-"
				}
				s := strconv.FormatFloat(val, 'f', prec, 64)
				if v.lib {
					s += fmt.Sprintf(" (%+.*f)", prec, val-base)
				}
				return s
			}
			_, hasInstr := v.instr[l.mode]
			wm, fw := benchkit.Median(v.warm[l.mode]), benchkit.Median(floor.warm[l.mode])
			sm, fs := benchkit.Median(v.swept[l.mode]), benchkit.Median(floor.swept[l.mode])
			fmt.Printf("    %-32s %16s %16s %20s\n", v.name,
				cell(v.instr[l.mode], floor.instr[l.mode], hasInstr, 0),
				cell(wm, fw, true, 1),
				cell(sm, fs, len(v.swept[l.mode]) > 0, 1))
		}
	}
	fmt.Println("  (in brackets: the library's cost beyond the floor's)")
	return nil
}

// check runs connectloop's output through ParseLoop and checks the
// address its socket was bound to.
func check(v *variant, mode string, out []byte) (float64, error) {
	ns, src, err := benchkit.ParseLoop(string(bytes.TrimSpace(out)))
	if err != nil {
		return 0, fmt.Errorf("%s, %s: %w", v.name, mode, err)
	}
	want := netip.IPv4Unspecified()
	if v.floor || v.lib {
		want = vip
	}
	if src != want {
		return 0, fmt.Errorf("%s, %s: the socket was bound to %s, want %s", v.name, mode, src, want)
	}
	return ns, nil
}

var betweenLine = regexp.MustCompile(`nosys: between (\d+) (\d+)`)

// timed runs one loop of n calls and returns ns per call: the loop's own
// figure with warm caches; with sweep, nosys.so's, the time from the end
// of one sweep to the next close (a call on cold caches, with the loop's
// own overhead, which is the same for every variant).
func timed(prog, mode string, n int, v *variant, sweep int) (float64, error) {
	cmd := exec.Command(prog, mode, strconv.Itoa(n), "127.0.0.1", "9")
	cmd.Env = append(append(os.Environ(), v.env...), "NOSYS_SWEEP="+strconv.Itoa(sweep))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("%s, %s: %v\n%s", v.name, mode, err, stderr.String())
	}
	ns, err := check(v, mode, out)
	if err != nil || sweep == 0 {
		return ns, err
	}
	m := betweenLine.FindSubmatch(stderr.Bytes())
	if m == nil {
		return 0, fmt.Errorf("%s, %s: nosys.so did not time the calls between its sweeps:\n%s", v.name, mode, stderr.String())
	}
	total, _ := strconv.ParseFloat(string(m[1]), 64)
	calls, _ := strconv.ParseFloat(string(m[2]), 64)
	if calls == 0 {
		return 0, fmt.Errorf("%s, %s: nosys.so timed no call between sweeps", v.name, mode)
	}
	return total / calls, nil
}

var collected = regexp.MustCompile(`Collected : (\d+)`)

// instructions counts the instructions per call of a loop under callgrind.
func instructions(valgrind, prog, mode string, v *variant) (float64, error) {
	count := func(n int) (float64, error) {
		cmd := exec.Command(valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", prog, mode, strconv.Itoa(n), "127.0.0.1", "9")
		cmd.Env = append(os.Environ(), v.env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return 0, fmt.Errorf("callgrind, %s, %s: %v\n%s", v.name, mode, err, stderr.String())
		}
		if _, err := check(v, mode, out); err != nil {
			return 0, err
		}
		m := collected.FindSubmatch(stderr.Bytes())
		if m == nil {
			return 0, fmt.Errorf("callgrind, %s, %s: no count in its output:\n%s", v.name, mode, stderr.String())
		}
		return strconv.ParseFloat(string(m[1]), 64)
	}
	a, err := count(shortN)
	if err != nil {
		return 0, err
	}
	b, err := count(longN)
	if err != nil {
		return 0, err
	}
	return (b - a) / (longN - shortN), nil
}

// startNoop runs noopd answering every QUERY with the VIP, for a day.
func startNoop(work, noopd string) (sock string, stop func(), err error) {
	reply := wire.AppendFrame(nil, wire.RespAnswer, wire.AppendAnswer(nil, wire.Answer{
		Kind: wire.KindVIP, Prefix: 24, VIP: vip, MachineIP: netip.MustParseAddr("127.0.0.1"),
		TTL: 86400, Session: wire.NoSession}))
	sock = filepath.Join(work, "noopd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, noopd, sock, hex.EncodeToString(reply))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		cancel()
		return "", nil, fmt.Errorf("start noopd: %w", err)
	}
	stop = func() { cancel(); cmd.Wait() }
	for deadline := time.Now().Add(5 * time.Second); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("noopd did not listen on %s", sock)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
