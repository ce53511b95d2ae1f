// Package goclient is `ipvirt-sim client`: the simulator's database client
// in Go. Go programs make raw system calls, so LD_PRELOAD cannot reach
// them; only the kernel interceptor can. It prints what the C client
// (../dbclient.c) prints, so the runner reads both alike.
package goclient

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Main runs the client with args (the words after `client`) and returns
// its exit status: 0 accepted, 1 anything else, 2 usage, 3 no result file.
func Main(args []string) int {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: ipvirt-sim client [--bind ADDR] [--hold] [--out FILE] HOST PORT\n\n"+
			"Connects to the simulated database server and prints one line:\n"+
			"  source=ADDR:PORT verdict=accepted|refused|denied|bind-failed|error connect_ns=N errno=NAME")
		fs.PrintDefaults()
	}
	bind := fs.String("bind", "", "bind to this source `address` first")
	hold := fs.Bool("hold", false, "keep an accepted connection open until killed")
	out := fs.String("out", "", "write the result line to `file` (atomically) instead of stdout")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return 2
	}
	// As the C client: die with the session leader that started us.
	parent := os.Getppid()
	unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0)
	if os.Getppid() != parent {
		return 1
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	if *bind != "" {
		ip := net.ParseIP(*bind)
		if ip == nil {
			fmt.Fprintf(os.Stderr, "ipvirt-sim client: bad --bind %q\n", *bind)
			return 2
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	start := time.Now()
	c, err := d.Dial("tcp4", net.JoinHostPort(fs.Arg(0), fs.Arg(1)))
	took := time.Since(start)
	if err != nil {
		verdict, name := "error", errnoName(err)
		var se *os.SyscallError
		switch {
		case errors.As(err, &se) && se.Syscall == "bind":
			verdict = "bind-failed"
		case errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
			verdict = "denied"
		}
		return writeResult(*out, "-", verdict, took, name)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	c.SetReadDeadline(time.Time{})
	verdict := "error"
	switch {
	case strings.HasPrefix(line, "OK"):
		verdict = "accepted"
	case strings.HasPrefix(line, "REFUSED"):
		verdict = "refused"
	}
	rc := writeResult(*out, c.LocalAddr().String(), verdict, took, "0")
	if *hold && verdict == "accepted" {
		io.Copy(io.Discard, c) // until killed or the server hangs up
	}
	return rc
}

func errnoName(err error) string {
	var e syscall.Errno
	if !errors.As(err, &e) {
		return "EIO"
	}
	for _, n := range []struct {
		e    syscall.Errno
		name string
	}{{syscall.EACCES, "EACCES"}, {syscall.EPERM, "EPERM"}, {syscall.ECONNREFUSED, "ECONNREFUSED"},
		{syscall.EADDRNOTAVAIL, "EADDRNOTAVAIL"}, {syscall.EADDRINUSE, "EADDRINUSE"}, {syscall.ETIMEDOUT, "ETIMEDOUT"}} {
		if e == n.e {
			return n.name
		}
	}
	return fmt.Sprintf("errno%d", int(e))
}

func writeResult(path, source, verdict string, took time.Duration, errno string) int {
	line := fmt.Sprintf("source=%s verdict=%s connect_ns=%d errno=%s\n", source, verdict, took.Nanoseconds(), errno)
	rc := 0
	if verdict != "accepted" {
		rc = 1
	}
	if path == "" {
		fmt.Print(line)
		return rc
	}
	if err := os.WriteFile(path+".tmp", []byte(line), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "ipvirt-sim client:", err)
		return 3
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		fmt.Fprintln(os.Stderr, "ipvirt-sim client:", err)
		return 3
	}
	return rc
}
