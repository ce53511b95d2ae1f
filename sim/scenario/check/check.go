// Package check holds the expectations a scenario's phase is judged by.
// Every key of a phase's `expect:` block is a registered check: registering
// one is what makes the parser accept its key, so a new check is one file.
// Clients' own expectations (`run: [{expect: ...}]`) are here too.
package check

import (
	"context"
	"maps"
	"slices"
	"sync"

	"go.yaml.in/yaml/v3"

	"github.com/ipvirt/ipvirt/sim/scenario/strictyaml"
)

// Check is one parsed `expect:` block of a phase.
type Check interface {
	// Begin runs once the phase's daemon is up and before any session or
	// client starts (start a packet capture here). The returned end runs
	// after the phase's timeline is over and every client has reported,
	// with env's results filled in; its outcomes are printed PASS/FAIL with
	// the phase's own. An error from Begin fails the run.
	Begin(ctx context.Context, env *Env) (end func(ctx context.Context) []Outcome, err error)
}

// Parse builds a check from its block when a scenario file is loaded, so
// that a bad block fails the load rather than the run; errors name the
// line. A nil Check with no error checks nothing (sources_match_report:
// false).
type Parse func(spec *yaml.Node, at Site) (Check, error)

// Site is where a block is in its file, for its errors, and what the file
// around it declares that a block may name.
type Site struct {
	Phase       string // "phases[2] (name)"
	Line        int    // the phase's line
	Key         string // the block's key under expect
	DHCPServers []string
}

// Decode decodes the block strictly; an unknown key's error names its
// place under expect.KEY.
func (s Site) Decode(spec *yaml.Node, v any) error {
	return strictyaml.DecodeAt(spec, v, "expect."+s.Key)
}

var (
	mu     sync.Mutex
	parses = map[string]Parse{}
)

// Register makes `expect: {key: ...}` a check of every phase that has it.
func Register(key string, parse Parse) {
	mu.Lock()
	defer mu.Unlock()
	parses[key] = parse
}

// Lookup returns the parser of key, if key is a check.
func Lookup(key string) (Parse, bool) {
	mu.Lock()
	defer mu.Unlock()
	p, ok := parses[key]
	return p, ok
}

// Keys are the registered keys, sorted.
func Keys() []string {
	mu.Lock()
	defer mu.Unlock()
	return slices.Sorted(maps.Keys(parses))
}

// atEnd is a check that only looks at the finished phase.
type atEnd func(ctx context.Context, env *Env) []Outcome

func (f atEnd) Begin(_ context.Context, env *Env) (func(context.Context) []Outcome, error) {
	return func(ctx context.Context) []Outcome { return f(ctx, env) }, nil
}
