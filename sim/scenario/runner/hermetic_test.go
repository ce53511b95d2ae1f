package runner

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/testenv"
	"github.com/ipvirt/ipvirt/sim/loginsession"
	"github.com/ipvirt/ipvirt/sim/scenario"
)

// TestScenariosAreHermetic: a scenario's outcome does not depend on what
// else lives on the host. With 30 foreign login sessions alive, two
// scenarios (one with a kernel-interceptor phase) run at the same time and
// both pass, and a foreign session that connects throughout keeps leaving
// from its own address. Before each run had a cgroup of its own, a
// scenario's daemon pre-allocated for every session on the host and its
// kernel programs rebound everyone's loopback connections.
func TestScenariosAreHermetic(t *testing.T) {
	testenv.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i := range 30 {
		s, err := loginsession.Start(ctx, loginsession.Audit, uint32(5100+i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
	}

	// The foreign session connecting throughout the runs.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	sources := map[string]int{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			sources[c.RemoteAddr().(*net.TCPAddr).IP.String()]++
			mu.Unlock()
			c.Close()
		}
	}()
	foreign, err := loginsession.Start(ctx, loginsession.Audit, 5200)
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	loop := fmt.Sprintf(`while :; do /usr/bin/python3 -c 'import socket; socket.create_connection(("127.0.0.1", %d)).close()'; sleep 0.05; done`,
		ln.Addr().(*net.TCPAddr).Port)
	if _, err := foreign.Run("/bin/sh", "-c", loop); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	for _, name := range []string{"duplicate-ip.yaml", "dhcp-basic.yaml"} {
		f, err := scenario.Load(scenarioPath(name))
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			var out bytes.Buffer
			res, err := Run(ctx, f, Options{Out: &out, ClientEnv: testClientEnv})
			switch {
			case err != nil:
				t.Errorf("%s: %v\n%s", name, err, out.String())
			case res.Failed() > 0 || len(res.Phases) != len(f.Phases):
				t.Errorf("%s beside 31 foreign sessions and another scenario: %s\n%s", name, Summary(res), out.String())
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if sources["127.0.0.1"] == 0 || len(sources) != 1 {
		t.Fatalf("the foreign session's connections came from %v, want 127.0.0.1 only", sources)
	}
}
