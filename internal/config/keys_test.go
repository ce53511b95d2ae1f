package config

// Every key the parser accepts is documented, and has a test that shows its
// effect. The keys come from the Config struct itself (its yaml tags, by
// reflection), so a key added to the struct fails these tests until the
// README's key table, deploy/ipvirt.yaml and the table of behaviour tests
// below name it: dhcp.lease_wait was once parsed and never passed on, and
// nothing noticed.

import (
	"encoding"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// keyPaths lists the key paths of the YAML that decodes into t
// (static_pool.start, dhcp.lease_wait, ...): a struct field is a section
// unless its type decodes itself (netip.Addr, Duration), then a key.
func keyPaths(t *testing.T, typ reflect.Type, prefix string) []string {
	t.Helper()
	var keys []string
	for f := range typ.Fields() {
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if opts == "inline" {
			keys = append(keys, keyPaths(t, ft, prefix)...)
			continue
		}
		if name == "" {
			// yaml.v3 would take the lower-cased field name: say it.
			t.Errorf("%s%s.%s has no yaml tag", prefix, typ.Name(), f.Name)
			continue
		}
		path := prefix + name
		if ft.Kind() == reflect.Struct && !decodesItself(ft) {
			keys = append(keys, keyPaths(t, ft, path+".")...)
			continue
		}
		keys = append(keys, path)
	}
	return keys
}

func decodesItself(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	return p.Implements(reflect.TypeFor[yaml.Unmarshaler]()) || p.Implements(reflect.TypeFor[encoding.TextUnmarshaler]())
}

func allKeys(t *testing.T) []string {
	t.Helper()
	keys := keyPaths(t, reflect.TypeFor[Config](), "")
	// A walk that found nothing nested would pass everything below.
	for _, k := range []string{"enabled", "static_pool.subnet_mask", "dhcp.lease_wait", "admins.groups"} {
		if !slices.Contains(keys, k) {
			t.Fatalf("the walk of Config misses %s: %v", k, keys)
		}
	}
	return keys
}

// yamlKeys lists the key paths of a YAML document: the leaves of its
// nested mappings.
func yamlKeys(n *yaml.Node, prefix string) []string {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		return yamlKeys(n.Content[0], prefix)
	}
	var keys []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i].Value, n.Content[i+1]
		if v.Kind == yaml.MappingNode {
			keys = append(keys, yamlKeys(v, prefix+k+".")...)
		} else {
			keys = append(keys, prefix+k)
		}
	}
	return keys
}

// compareKeys reports keys missing from doc, and keys doc has that the
// parser does not know.
func compareKeys(t *testing.T, doc string, want, got []string) {
	t.Helper()
	for _, k := range want {
		if !slices.Contains(got, k) {
			t.Errorf("%s does not list key %s", doc, k)
		}
	}
	for _, k := range got {
		if !slices.Contains(want, k) {
			t.Errorf("%s lists %s, which is no key of the parser", doc, k)
		}
	}
}

var (
	// readmeKeyTable is the header row of a key table in README.md.
	readmeKeyTable = regexp.MustCompile(`^\|\s*key\s*\|\s*default\s*\|`)
	// readmeKeyCell finds the keys in a row's first cell: one or more,
	// `static_pool.start`, `.end` being static_pool.end.
	readmeKeyCell = regexp.MustCompile("`([^`]+)`")
)

// readmeKeys lists the keys the README's key tables (those headed
// "| key | default | meaning |") document. `dhcp.*` points at the DHCP
// section's own table and names no key.
func readmeKeys(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	inTable := false
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		switch {
		case readmeKeyTable.MatchString(line):
			inTable = true
			continue
		case !strings.HasPrefix(line, "|"):
			inTable = false
		}
		if !inTable || strings.HasPrefix(line, "|---") {
			continue
		}
		cell, _, _ := strings.Cut(strings.TrimPrefix(line, "|"), "|")
		prev := ""
		for _, m := range readmeKeyCell.FindAllStringSubmatch(cell, -1) {
			k := m[1]
			if strings.HasPrefix(k, ".") {
				parent, _, ok := cutLast(prev, ".")
				if !ok {
					t.Fatalf("README key table row %q: %s follows no dotted key", line, k)
				}
				k = parent + k
			}
			prev = k
			if !strings.HasSuffix(k, ".*") {
				keys = append(keys, k)
			}
		}
	}
	if len(keys) == 0 {
		t.Fatal("no key table found in README.md")
	}
	return keys
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// TestEveryKeyDocumented: the README's key tables, deploy/ipvirt.yaml and
// testdata/full.yaml ("every key") list exactly the keys the parser takes,
// and the deployed example is a valid file.
func TestEveryKeyDocumented(t *testing.T) {
	keys := allKeys(t)
	compareKeys(t, "README.md's key tables", keys, readmeKeys(t))

	for _, path := range []string{"../../deploy/ipvirt.yaml", "testdata/full.yaml"} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(b); err != nil {
			t.Errorf("%s: %v", path, err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		compareKeys(t, path, keys, yamlKeys(&doc, ""))
	}
}

// testRef names a test function in a package of this module.
type testRef struct{ pkg, name string }

// behaviourTests names, for every key, the tests that set it to a value
// other than its default and see the behaviour change as README.md says.
// Each goes through the configuration as the daemon reads it, except where
// the effect needs machinery tested on its own: then a plumbing test shows
// the key reaching the component, and the component's test its effect.
var behaviourTests = map[string][]testRef{
	"enabled": {{"internal/daemon", "TestKeyEnabled"}},
	// per-program: an unlisted program gets the machine IP.
	"mode":    {{"internal/daemon", "TestPerProgramMode"}},
	"adapter": {{"internal/daemon", "TestKeyAdapter"}},
	"source":  {{"internal/daemon", "TestKeyStaticPool"}},

	"static_pool.start":       {{"internal/daemon", "TestKeyStaticPool"}},
	"static_pool.end":         {{"internal/daemon", "TestKeyStaticPool"}},
	"static_pool.subnet_mask": {{"internal/daemon", "TestKeyStaticPool"}},

	"dhcp.server":        {{"internal/daemon", "TestKeyDHCPRelay"}},
	"dhcp.relay_address": {{"internal/daemon", "TestKeyDHCPRelay"}},
	"dhcp.vendor_class":  {{"internal/daemon", "TestKeyDHCPRelay"}},
	"dhcp.hostname":      {{"internal/daemon", "TestKeyDHCPRelay"}},
	// Shorter than the default; and longer than the manager's own bound
	// (through libipvirt.so, from make build), the bug of old.
	"dhcp.lease_wait":      {{"internal/daemon", "TestKeyDHCPLeaseWait"}, {"internal/daemon", "TestLeaseWaitIsHonoured"}},
	"dhcp.max_inflight":    {{"internal/daemon", "TestKeyDHCPMaxInflight"}},
	"dhcp.retransmit_base": {{"internal/daemon", "TestKeyDHCPRetransmitBase"}},
	"dhcp.renew_retry_min": {{"internal/daemon", "TestKeyDHCPRenewRetryMin"}},
	"dhcp.arp_probe":       {{"internal/daemon", "TestKeyDHCPARPProbe"}},
	"dhcp.arp_probe_wait":  {{"internal/daemon", "TestKeyDHCPARPProbeWait"}},
	"dhcp.client_port":     {{"internal/daemon", "TestKeyDHCPClientPort"}},
	// Relay mode (the relay's port) and broadcast mode (the server's).
	"dhcp.server_port": {{"internal/daemon", "TestKeyDHCPRelay"}, {"internal/daemon", "TestKeyDHCPClientPort"}},

	// The daemon against a real etcd (endpoints, lease_ttl, dial_timeout),
	// and the source's own tests of what needs a cluster set up for it:
	// TLS, authentication, two farms on one cluster.
	"etcd.endpoints":     {{"internal/daemon", "TestEtcdFarmSource"}},
	"etcd.lease_ttl":     {{"internal/daemon", "TestEtcdFarmSource"}, {"internal/source/etcd", "TestPartitionedHostFencesItself"}},
	"etcd.dial_timeout":  {{"internal/daemon", "TestEtcdFarmSource"}},
	"etcd.prefix":        {{"internal/source/etcd", "TestPrefixSeparatesFarms"}},
	"etcd.ca":            {{"internal/source/etcd", "TestTLSClientCertificates"}},
	"etcd.cert":          {{"internal/source/etcd", "TestTLSClientCertificates"}},
	"etcd.key":           {{"internal/source/etcd", "TestTLSClientCertificates"}},
	"etcd.username":      {{"internal/source/etcd", "TestUsernameAndPasswordFile"}},
	"etcd.password_file": {{"internal/source/etcd", "TestUsernameAndPasswordFile"}},
	// pam: a forged login uid gets the machine IP; loginuid: a VIP.
	"session_trust": {{"internal/daemon", "TestForgedLoginUIDNotVirtualizedUnderPAM"}},

	"programs":      {{"internal/daemon", "TestKeyPrograms"}},
	"admins.users":  {{"internal/daemon", "TestKeyAdmins"}},
	"admins.groups": {{"internal/daemon", "TestKeyAdmins"}},
	// deny: the exhausted pool's answer is denied, not the machine IP.
	"on_exhausted": {{"internal/daemon", "TestExhaustedAnswers"}},
	"grace":        {{"internal/daemon", "TestKeyGrace"}},
	// The lease store and its lock; the kernel interceptor's pin directory.
	"state_dir": {{"internal/daemon", "TestKeyStateDir"}, {"internal/daemon", "TestKernelOptionsFromConfig"}},
	"socket":    {{"internal/daemon", "TestKeySocket"}},
	// daemonproc puts http on a free port, where the endpoints answer.
	"http": {{"internal/daemon", "TestHTTPEndpoints"}},
	// true with a static source, whose default is false.
	"preallocate": {{"internal/daemon", "TestPreallocateOnLogon"}},
	// 4 and 16, not the pool's default: status shows the stock so sized;
	// the storm tests show what it is for.
	"kernel_stock":     {{"internal/daemon", "TestFirstUseRules"}, {"internal/daemon", "TestAssignmentSurvivesACrash"}, {"internal/daemon", "TestFirstConnectAtLogon"}},
	"scan_interval":    {{"internal/daemon", "TestKeyScanInterval"}},
	"session_identity": {{"internal/daemon", "TestKeySessionIdentity"}},
	"scope":            {{"internal/daemon", "TestKeyScope"}},
	// The daemon with interceptor: bpf (eBPF, root).
	"interceptor": {{"internal/daemon", "TestKernelInterceptor"}},
	// The kernel's refusal is only seen with the eBPF programs loaded:
	// the file's enforce reaching bpf.Options, then Options.Enforce at work.
	"enforce": {{"internal/daemon", "TestKernelOptionsFromConfig"}, {"lsp/bpf", "TestEnforcementBeyondBind"}},
}

// TestEveryKeyHasABehaviourTest: behaviourTests covers every key and no
// other, and each test it names exists and mentions its key (by its last
// name: lease_wait, subnet_mask), so that the table cannot point at a
// renamed or unrelated test.
func TestEveryKeyHasABehaviourTest(t *testing.T) {
	keys := allKeys(t)
	for _, k := range keys {
		if len(behaviourTests[k]) == 0 {
			t.Errorf("key %s: no test shows its effect; write one (internal/daemon/keys_test.go) and list it in behaviourTests", k)
		}
	}
	for k := range behaviourTests {
		if !slices.Contains(keys, k) {
			t.Errorf("behaviourTests lists %s, which is no key of the parser", k)
		}
	}
	sources := map[string]string{} // package directory → its test files, concatenated
	for k, refs := range behaviourTests {
		_, leaf, ok := cutLast(k, ".")
		if !ok {
			leaf = k
		}
		for _, ref := range refs {
			src, ok := sources[ref.pkg]
			if !ok {
				files, err := filepath.Glob(filepath.Join("..", "..", ref.pkg, "*_test.go"))
				if err != nil || len(files) == 0 {
					t.Fatalf("%s: no test files (%v)", ref.pkg, err)
				}
				var all strings.Builder
				for _, f := range files {
					b, err := os.ReadFile(f)
					if err != nil {
						t.Fatal(err)
					}
					all.Write(b)
					all.WriteString("\n")
				}
				src = all.String()
				sources[ref.pkg] = src
			}
			text, found := testText(src, ref.name)
			if !found {
				t.Errorf("key %s: %s has no func %s(t *testing.T)", k, ref.pkg, ref.name)
				continue
			}
			if !strings.Contains(text, leaf) {
				t.Errorf("key %s: %s.%s never mentions %s", k, ref.pkg, ref.name, leaf)
			}
		}
	}
}

// testText returns test function name of src with its doc comment.
func testText(src, name string) (string, bool) {
	i := strings.Index(src, "\nfunc "+name+"(t *testing.T) {\n")
	if i < 0 {
		return "", false
	}
	// Back over the doc comment.
	start := i
	for {
		j := strings.LastIndex(src[:start], "\n")
		if j < 0 || !strings.HasPrefix(src[j+1:start], "//") {
			break
		}
		start = j
	}
	end := strings.Index(src[i+1:], "\n}\n")
	if end < 0 {
		return src[start:], true
	}
	return src[start : i+1+end], true
}
