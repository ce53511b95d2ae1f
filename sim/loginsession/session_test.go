package loginsession

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
)

func sessionOfPID(t *testing.T, kind Kind, pid int) uint32 {
	t.Helper()
	if kind == Audit {
		id, err := SessionOf(pid)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	sid, _ := strconv.Atoi(f[3])
	return uint32(sid)
}

func TestSessionRunsProgramsInside(t *testing.T) {
	for _, kind := range []Kind{POSIX, Audit} {
		t.Run(string(kind), func(t *testing.T) {
			if ok, why := Available(kind); !ok {
				if os.Getenv("CI") == "true" {
					t.Fatalf("%s (CI=true: not skipping)", why)
				}
				t.Skip(why)
			}
			s1, err := Start(context.Background(), kind, 60001)
			if err != nil {
				t.Fatal(err)
			}
			defer s1.Close()
			s2, err := Start(context.Background(), kind, 60002)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if s1.ID == s2.ID {
				t.Fatalf("two sessions share id %d", s1.ID)
			}
			pid, err := s1.Run("sleep", "60")
			if err != nil {
				t.Fatal(err)
			}
			if got := sessionOfPID(t, kind, pid); got != s1.ID {
				t.Fatalf("program in session %d, want %d", got, s1.ID)
			}
			exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
			if !strings.HasSuffix(exe, "/sleep") {
				t.Fatalf("exe %q", exe)
			}
			if err := s1.Kill(pid); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
				t.Fatal("killed program still in /proc (zombie not reaped)")
			}
			if kind == Audit {
				b, _ := os.ReadFile("/proc/" + strconv.Itoa(s2.LeaderPID()) + "/loginuid")
				if string(b) != "60002" {
					t.Fatalf("loginuid %q, want 60002", b)
				}
			}
		})
	}
}

func TestRunEnv(t *testing.T) {
	s, err := Start(context.Background(), POSIX, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := t.TempDir() + "/env"
	pid, err := s.RunEnv([]string{"IPVIRT_TEST=it's $HOME"}, "/bin/sh", "-c", `printf %s "$IPVIRT_TEST" > "$1"`, "sh", out)
	if err != nil {
		t.Fatal(err)
	}
	s.Reap(pid)
	b, err := os.ReadFile(out)
	if err != nil || string(b) != "it's $HOME" {
		t.Fatalf("program saw %q, %v", b, err)
	}
	if _, err := s.RunEnv([]string{"BAD NAME=x"}, "true"); err == nil {
		t.Fatal("accepted a bad variable name")
	}
}

// A program's stderr goes to the file asked for, appended, quoting intact.
func TestRunEnvStderr(t *testing.T) {
	s, err := Start(context.Background(), POSIX, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	errFile := t.TempDir() + "/it's stderr"
	for _, word := range []string{"one", "two"} {
		pid, err := s.RunEnvStderr(nil, errFile, "/bin/sh", "-c", `echo "$1" >&2; echo out`, "sh", word)
		if err != nil {
			t.Fatal(err)
		}
		s.Reap(pid)
	}
	b, err := os.ReadFile(errFile)
	if err != nil || string(b) != "one\ntwo\n" {
		t.Fatalf("stderr file holds %q, %v; want one, two (and no stdout)", b, err)
	}
}
