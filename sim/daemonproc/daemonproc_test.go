package daemonproc

import (
	"os"
	"path/filepath"
	"testing"
)

// go test runs in the package's directory, two levels below go.mod.
func TestModuleRoot(t *testing.T) {
	got, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := filepath.Abs(filepath.Join("..", ".."))
	if got != want {
		t.Fatalf("ModuleRoot = %s, want %s", got, want)
	}
	t.Chdir(os.TempDir())
	if root, err := ModuleRoot(); err == nil {
		t.Fatalf("ModuleRoot in %s = %s, want an error", os.TempDir(), root)
	}
}
