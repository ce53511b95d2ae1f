package loginsession

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Session is a live login session with a shell as its leader, through which
// programs are started inside the session (a login session only grows by
// its members forking, so something inside it must do the starting).
type Session struct {
	ID   uint32 // audit session id, or the POSIX session id (the leader's pid)
	Kind Kind
	UID  uint32

	mu     sync.Mutex
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
}

// leaderScript reads commands on stdin: "run PROG ARGS..." starts PROG in
// the background and prints its pid; "reap PID" waits for a killed child.
const leaderScript = `while read -r op rest; do
  case "$op" in
    run) eval "$rest" </dev/null >/dev/null 2>&1 & echo "$!";;
    reap) wait "$rest" 2>/dev/null; echo done;;
    *) echo "bad $op";;
  esac
done`

// Start opens a new login session of kind for uid.
func Start(ctx context.Context, kind Kind, uid uint32) (*Session, error) {
	return StartWrapped(ctx, kind, uid, nil)
}

// StartWrapped is Start with the session leader's command line rewritten by
// wrap (nil: unchanged), for example to run the session inside a network
// namespace. wrap must exec its argument so the leader keeps its pid.
func StartWrapped(ctx context.Context, kind Kind, uid uint32, wrap func(argv []string) []string) (*Session, error) {
	cmd := Command(ctx, kind, uid, "/bin/sh", "-c", leaderScript)
	if wrap != nil {
		argv := wrap(append([]string{cmd.Path}, cmd.Args[1:]...))
		cmd.Path, cmd.Args, cmd.Err = argv[0], argv, nil
		if lp, err := exec.LookPath(argv[0]); err == nil {
			cmd.Path = lp
		}
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("loginsession: start %s session: %w", kind, err)
	}
	s := &Session{Kind: kind, UID: uid, cmd: cmd, stdin: in, stdout: bufio.NewReader(out)}
	// A round trip proves the leader is past the loginuid write.
	pid, err := s.Run("true")
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("loginsession: %s session did not start: %w", kind, err)
	}
	s.Reap(pid)
	switch kind {
	case Audit:
		id, err := SessionOf(cmd.Process.Pid)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.ID = id
	default:
		s.ID = uint32(cmd.Process.Pid)
	}
	return s, nil
}

// LeaderPID is the pid of the session's shell.
func (s *Session) LeaderPID() int { return s.cmd.Process.Pid }

// Run starts a program inside the session and returns its pid once the
// program has replaced the forked shell (so /proc shows the program).
func (s *Session) Run(prog string, args ...string) (int, error) {
	return s.RunEnv(nil, prog, args...)
}

// RunEnv is Run with extra environment variables ("NAME=value") for the
// program, such as LD_PRELOAD.
func (s *Session) RunEnv(env []string, prog string, args ...string) (int, error) {
	return s.RunEnvStderr(env, "", prog, args...)
}

// RunEnvStderr is RunEnv with the program's standard error appended to the
// file stderr ("" discards it, as RunEnv does).
func (s *Session) RunEnvStderr(env []string, stderr string, prog string, args ...string) (int, error) {
	var words []string
	for _, e := range env {
		name, value, ok := strings.Cut(e, "=")
		if !ok || name == "" || strings.ContainsAny(name, " \t'\"$;&|") {
			return 0, fmt.Errorf("loginsession: bad environment entry %q", e)
		}
		words = append(words, name+"="+shellQuote(value))
	}
	words = append(words, "exec", shellQuote(prog))
	for _, a := range args {
		words = append(words, shellQuote(a))
	}
	if stderr != "" {
		// Inside the eval, so it overrides the leader's 2>&1 to /dev/null.
		words = append(words, "2>>"+shellQuote(stderr))
	}
	reply, err := s.call("run " + strings.Join(words, " "))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(reply)
	if err != nil {
		return 0, fmt.Errorf("loginsession: leader said %q", reply)
	}
	want := prog
	if !strings.HasPrefix(prog, "/") {
		if p, err := exec.LookPath(prog); err == nil {
			want = p
		}
	}
	// The forked shell has the leader's command line until it execs; a
	// program that execs on at once (sh -c 'exec setpriv ... python3')
	// can be past want before the first look, so a changed command line
	// counts as replaced too.
	leader, _ := os.ReadFile("/proc/" + strconv.Itoa(s.LeaderPID()) + "/cmdline")
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
		if err == nil && sameFile(exe, want) {
			return pid, nil
		}
		if cl, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil && len(cl) > 0 && len(leader) > 0 && !bytes.Equal(cl, leader) {
			return pid, nil
		}
		if err != nil && exited(pid) {
			return pid, nil // a short-lived program already done
		}
		time.Sleep(time.Millisecond)
	}
	return pid, fmt.Errorf("loginsession: pid %d never became %s", pid, prog)
}

// Kill ends one program of the session and reaps it, so that no zombie is
// left for /proc scans to count.
func (s *Session) Kill(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return s.Reap(pid)
}

// Reap waits for a child of the leader that has exited or been killed.
func (s *Session) Reap(pid int) error {
	_, err := s.call("reap " + strconv.Itoa(pid))
	return err
}

// Close ends every process of the session and returns once none is left,
// so that whoever watches sessions sees it gone.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stdin.Close()
	KillGroup(s.cmd)
	s.cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for s.hasMembers() {
		if time.Now().After(deadline) {
			return fmt.Errorf("loginsession: session %d still has processes 10s after SIGKILL", s.ID)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// hasMembers reports whether a live (not zombie) process is in the session.
func (s *Session) hasMembers() bool {
	d, err := os.Open("/proc")
	if err != nil {
		return false
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || exited(pid) {
			continue
		}
		if s.Kind == Audit {
			if id, err := SessionOf(pid); err == nil && id == s.ID {
				return true
			}
		} else if sid, err := posixSession(pid); err == nil && sid == s.ID {
			return true
		}
	}
	return false
}

func posixSession(pid int) (uint32, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 4 {
		return 0, errors.New("short stat")
	}
	sid, err := strconv.Atoi(f[3])
	return uint32(sid), err
}

func (s *Session) call(line string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := io.WriteString(s.stdin, line+"\n"); err != nil {
		return "", fmt.Errorf("loginsession: leader gone: %w", err)
	}
	reply, err := s.stdout.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("loginsession: leader gone: %w", err)
	}
	return strings.TrimSpace(reply), nil
}

// exited reports whether pid is gone or a zombie.
func exited(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}
