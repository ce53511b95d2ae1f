package strictyaml

import (
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestStrictErrors(t *testing.T) {
	type entry struct {
		Name  string   `yaml:"name"`
		Every Duration `yaml:"every"`
	}
	var n yaml.Node
	if err := yaml.Unmarshal([]byte("- {name: a}\n- {name: b, evry: 1s}\n"), &n); err != nil {
		t.Fatal(err)
	}
	var v []entry
	err := DecodeAt(n.Content[0], &v, "expect.things")
	want := `line 2: expect.things[1]: unknown key "evry" (known: every, name)`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
	if err := yaml.Unmarshal([]byte("{name: a, every: soon}"), &n); err != nil {
		t.Fatal(err)
	}
	var e entry
	err = Decode(n.Content[0], &e)
	want = `line 1: bad duration "soon" (want e.g. 250ms, 2s)`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}
