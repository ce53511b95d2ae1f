package store

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipvirt/ipvirt/internal/testenv"
)

// filled makes a store holding n leases, closed, and returns its directory.
func filled(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		if err := s.Put(mkLease(uint32(i), fmt.Sprintf("10.0.%d.%d", i/250, 1+i%250))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// An emptied, removed or replaced lease file used to be a silent fresh
// start: every live holder's VIP went back to the pool.
func TestLostFileRefused(t *testing.T) {
	other := filled(t, 3)
	tests := []struct {
		name string
		harm func(dir string) error
		want string
	}{
		{"emptied", func(dir string) error { return os.Truncate(filepath.Join(dir, FileName), 0) }, "is empty (0 bytes)"},
		{"removed", func(dir string) error { return os.Remove(filepath.Join(dir, FileName)) }, "is missing"},
		{"replaced", func(dir string) error {
			b, err := os.ReadFile(filepath.Join(other, FileName))
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, FileName), b, 0o600)
		}, "names instance"},
		{"seal damaged", func(dir string) error { return os.WriteFile(filepath.Join(dir, sealName), []byte("{"), 0o600) }, "is damaged"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filled(t, 25)
			if err := tt.harm(dir); err != nil {
				t.Fatal(err)
			}
			s, err := Open(dir)
			if err == nil {
				s.Close()
				t.Fatal("Open accepted the harmed store")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not say %q", err, tt.want)
			}
		})
	}
}

func TestSealWrittenOnceAndKept(t *testing.T) {
	dir := filled(t, 1)
	first, err := readSeal(dir)
	if err != nil || first.Instance == "" {
		t.Fatalf("seal after create: %+v, %v", first, err)
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if again, _ := readSeal(dir); again != first {
		t.Fatalf("seal changed on reopen: %+v then %+v", first, again)
	}
}

// A file predating the seal is adopted: its instance is recorded and sealed.
func TestUnsealedFileIsSealed(t *testing.T) {
	dir := filled(t, 2)
	if err := os.Remove(filepath.Join(dir, sealName)); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if sl, err := readSeal(dir); err != nil || sl.Instance == "" {
		t.Fatalf("not resealed: %+v, %v", sl, err)
	}
}

// A truncated file or random bytes in its pages used to kill the daemon
// with SIGBUS or a bbolt assertion. Each is run in a child process, so a
// crash shows as the child's exit status rather than taking the test binary
// down; the child must report an error or load cleanly, never crash.
func TestDamagedFileIsAnError(t *testing.T) {
	if os.Getenv("IPVIRT_STORE_OPEN") != "" {
		s, err := Open(os.Getenv("IPVIRT_STORE_OPEN"))
		if err != nil {
			fmt.Println("ERROR:", err)
			os.Exit(1)
		}
		got, bad := s.Leases()
		fmt.Println("LOADED:", len(got), "bad", len(bad))
		s.Close()
		os.Exit(0)
	}
	cases := []struct {
		name string
		harm func(path string) error
	}{
		{"truncated to 8 KiB", func(p string) error { return os.Truncate(p, 8192) }},
		{"truncated to 1 KiB", func(p string) error { return os.Truncate(p, 1024) }},
	}
	for seed := range 12 {
		cases = append(cases, struct {
			name string
			harm func(path string) error
		}{fmt.Sprintf("random data pages, seed %d", seed), func(p string) error { return scribble(p, uint64(seed)) }})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filled(t, 600)
			if err := tc.harm(filepath.Join(dir, FileName)); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestDamagedFileIsAnError$")
			cmd.Env = append(os.Environ(), "IPVIRT_STORE_OPEN="+dir)
			out, err := cmd.CombinedOutput()
			text := string(out)
			switch {
			case strings.Contains(text, "LOADED:"):
			case strings.Contains(text, "ERROR:") && strings.Contains(text, FileName):
			default:
				t.Fatalf("child crashed or said nothing useful (%v):\n%s", err, text)
			}
			if strings.Contains(text, "goroutine ") || strings.Contains(text, "SIGBUS") {
				t.Fatalf("child printed a Go crash:\n%s", text)
			}
		})
	}
}

// scribble overwrites random runs of bytes after the two meta pages.
func scribble(path string, seed uint64) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(seed, 1))
	const metaPages = 2 * 4096
	for range 8 {
		at := metaPages + r.IntN(len(b)-metaPages-64)
		for i := range 64 {
			b[at+i] = byte(r.Uint32())
		}
	}
	return os.WriteFile(path, b, 0o600)
}

// FuzzOpen: whatever bytes the lease file holds, Open returns a store or an
// error; it never crashes the process (the fuzzer reports a crash as a
// failure, and precheck is what keeps bbolt's own goroutine from faulting).
func FuzzOpen(f *testing.F) {
	seed := filled(&testing.T{}, 20)
	b, err := os.ReadFile(filepath.Join(seed, FileName))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:8192])
	f.Fuzz(func(t *testing.T, data []byte) {
		// The fuzzer has no time limit per input: an Open that never
		// returns would only show as workers that stop. Crash instead,
		// so that the input is saved.
		watchdog := time.AfterFunc(60*time.Second, func() { panic("Open ran for 60s on one input") })
		defer watchdog.Stop()
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileName), data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(dir)
		if err != nil {
			// bbolt's own walk found damage precheck let through. Open
			// turned it into an error, but the walk's goroutine runs on
			// over the rolled-back transaction and may crash the process,
			// later and only sometimes: fail on the sign, every time.
			if strings.Contains(err.Error(), "freepages") {
				t.Fatalf("bbolt's check found what precheck did not: %v", err)
			}
			return
		}
		s.Leases()
		s.Close()
	})
}

// A full disk used to leave the daemon reporting itself healthy while every
// grant failed. Healthy follows the last commit: an error while the disk is
// full, nil again after a commit succeeds.
func TestFullDiskUnhealthy(t *testing.T) {
	testenv.RequireRoot(t) // mounts a small tmpfs
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "ipvirt-test", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Healthy(); err != nil {
		t.Fatalf("fresh store unhealthy: %v", err)
	}
	filler := filepath.Join(dir, "filler")
	// Fill what the database has not taken, then grow it until a commit fails.
	exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=4k", "count=1000").Run()
	var putErr error
	for i := 1; i < 5000 && putErr == nil; i++ {
		l := mkLease(uint32(i), fmt.Sprintf("10.0.%d.%d", i/250, 1+i%250))
		l.State = make([]byte, 512)
		putErr = s.Put(l)
	}
	if putErr == nil {
		t.Fatal("no commit failed on a full 256 KiB tmpfs")
	}
	if err := s.Healthy(); err == nil {
		t.Fatalf("Healthy() = nil after a failed commit (%v)", putErr)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(mkLease(9999, "10.0.99.1")); err != nil {
		t.Fatalf("Put after freeing space: %v", err)
	}
	if err := s.Healthy(); err != nil {
		t.Fatalf("Healthy() after a good commit: %v", err)
	}
}
