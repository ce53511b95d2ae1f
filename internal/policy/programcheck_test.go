package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckProgram(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	link := func(name, target string) string {
		p := filepath.Join(dir, name)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	elf := write("bin/tool", "\x7fELF\x02\x01\x01", 0o755)
	script := write("bin/run.sh", "#!/bin/sh -e\nexec /usr/bin/true\n", 0o755)
	// Debian's layout: /usr/bin/psql → ../share/postgresql-common/pg_wrapper,
	// which execs /usr/lib/postgresql/<version>/bin/psql.
	wrapper := write("share/postgresql-common/pg_wrapper", "#! /usr/bin/perl -w\n", 0o755)
	pgRoot := filepath.Join(dir, "lib/postgresql")
	realPsql := write("lib/postgresql/15/bin/psql", "\x7fELF", 0o755)
	psql := link("bin/psql", wrapper)
	data := write("bin/data", "not a program", 0o644)

	for _, tc := range []struct {
		name, path string
		want       []string // substrings; none means no warning
	}{
		{"binary", elf, nil},
		{"symlink to a binary", link("bin/alias", elf), nil},
		{"script", script, []string{"is a script run by /bin/sh -e", "matches nothing"}},
		{"pg_wrapper", psql, []string{"a symlink to " + wrapper, "run by /usr/bin/perl -w", "here " + realPsql}},
		{"real psql", realPsql, nil},
		{"missing", filepath.Join(dir, "bin/nope"), []string{"does not exist"}},
		{"not executable", data, []string{"is not executable"}},
		{"directory", filepath.Join(dir, "bin"), []string{"is not a regular file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := checkProgram(tc.path, pgRoot)
			if len(tc.want) == 0 {
				if got != "" {
					t.Fatalf("warning %q, want none", got)
				}
				return
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Fatalf("warning %q lacks %q", got, w)
				}
			}
		})
	}
}
