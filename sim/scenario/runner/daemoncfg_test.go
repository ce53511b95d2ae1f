package runner

import "testing"

func TestMerge(t *testing.T) {
	base := map[string]any{"mode": "per-session", "static_pool": map[string]any{"start": "a", "end": "b"}}
	got := merge(merge(map[string]any{}, base), map[string]any{"static_pool": map[string]any{"end": "c"}, "grace": "1s"})
	pool := got["static_pool"].(map[string]any)
	if pool["start"] != "a" || pool["end"] != "c" || got["grace"] != "1s" || got["mode"] != "per-session" {
		t.Fatalf("merge: %v", got)
	}
	if base["static_pool"].(map[string]any)["end"] != "b" {
		t.Fatal("merge changed its input")
	}
}
