package policy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// CheckProgram returns why a per-program entry will not match what an
// administrator expects, or "" when it looks right. Entries match the
// executable the kernel reports for a process (/proc/PID/exe), so an entry
// that is a script never matches: its processes run as the interpreter and
// then as whatever the script executes. Debian's /usr/bin/psql is such a
// script (a symlink to PostgreSQL's pg_wrapper, run by perl).
func CheckProgram(path string) string {
	return checkProgram(path, "/usr/lib/postgresql")
}

// checkProgram is CheckProgram with the root of PostgreSQL's versioned
// binaries, where pg_wrapper's targets live.
func checkProgram(path, pgRoot string) string {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		if os.IsNotExist(err) {
			return fmt.Sprintf("%s does not exist: the entry matches nothing until it is installed", path)
		}
		return fmt.Sprintf("%s: %v", path, err)
	}
	via := ""
	if real != filepath.Clean(path) {
		via = " (a symlink to " + real + ")"
	}
	fi, err := os.Stat(real)
	switch {
	case err != nil:
		return fmt.Sprintf("%s%s: %v", path, via, err)
	case !fi.Mode().IsRegular():
		return fmt.Sprintf("%s%s is not a regular file: the entry matches nothing", path, via)
	case fi.Mode().Perm()&0o111 == 0:
		return fmt.Sprintf("%s%s is not executable: the entry matches nothing", path, via)
	}
	interp, ok := shebang(real)
	if !ok {
		return ""
	}
	hint := ""
	if filepath.Base(real) == "pg_wrapper" {
		if found, _ := filepath.Glob(filepath.Join(pgRoot, "*", "bin", filepath.Base(path))); len(found) > 0 {
			hint = ": here " + strings.Join(found, " or ")
		}
	}
	return fmt.Sprintf("%s%s is a script run by %s: its processes show %s and then whatever the script executes, "+
		"never %s, so the entry matches nothing; list the executable the script runs instead%s",
		path, via, interp, interp, path, hint)
}

// shebang returns a script's interpreter line ("/usr/bin/perl",
// "/usr/bin/env python3").
func shebang(path string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	buf := make([]byte, 256)
	n, _ := f.Read(buf)
	buf = buf[:n]
	if !bytes.HasPrefix(buf, []byte("#!")) {
		return "", false
	}
	line, _, _ := bytes.Cut(buf[2:], []byte("\n"))
	interp := strings.Join(strings.Fields(string(line)), " ")
	if interp == "" {
		interp = "the shell"
	}
	return interp, true
}
