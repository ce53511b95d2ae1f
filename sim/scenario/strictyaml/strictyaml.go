// Package strictyaml decodes the blocks of a scenario file strictly: a key
// the target has no field for, or a bad value, is an error that names its
// line, so a typo never silently drops an expectation. The schema, the
// topologies and the checks all decode their blocks with it.
package strictyaml

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Decode decodes n into v like n.Decode, but first rejects keys that v has
// no field for, naming the key, its line and the keys that exist.
// yaml.Node.Decode has no KnownFields switch, and re-encoding the node to
// use a Decoder would lose the line numbers of the scenario file.
func Decode(n *yaml.Node, v any) error { return DecodeAt(n, v, "") }

// DecodeAt is Decode for a block found at path in the file (expect.metrics):
// an unknown key's error names where it is below that path.
func DecodeAt(n *yaml.Node, v any, path string) error {
	if err := checkKeys(n, reflect.TypeOf(v), path); err != nil {
		return err
	}
	return n.Decode(v)
}

// Errorf is an error about a line of the file, "line N: message"; a
// scenario's Load prints it as FILE:N: message.
func Errorf(line int, format string, args ...any) error {
	return &lineError{line: line, msg: fmt.Sprintf(format, args...)}
}

type lineError struct {
	line int
	msg  string
}

func (e *lineError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

// Duration is a time.Duration written as "250ms", "2s".
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return Errorf(n.Line, "bad duration %q (want e.g. 250ms, 2s)", n.Value)
	}
	*d = Duration(v)
	return nil
}

var (
	nodeType        = reflect.TypeOf(yaml.Node{})
	unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
)

func checkKeys(n *yaml.Node, t reflect.Type, path string) error {
	if n == nil {
		return nil
	}
	for n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nodeType || reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil // a type mismatch: Decode reports it with its line
		}
		fields, open := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			ft, ok := fields[k.Value]
			if !ok {
				if open {
					continue
				}
				return fmt.Errorf("line %d: %sunknown key %q (known: %s)", k.Line, prefix(path), k.Value, strings.Join(slices.Sorted(maps.Keys(fields)), ", "))
			}
			if err := checkKeys(val, ft, join(path, k.Value)); err != nil {
				return err
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := checkKeys(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value)); err != nil {
				return err
			}
		}
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return nil
		}
		for i, c := range n.Content {
			if err := checkKeys(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// yamlFields maps a struct's YAML keys to their types; open is true when an
// inline map takes any other key.
func yamlFields(t reflect.Type) (fields map[string]reflect.Type, open bool) {
	fields = map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",inline,") {
			ft := f.Type
			if ft.Kind() == reflect.Map {
				open = true
				continue
			}
			sub, o := yamlFields(ft)
			for k, v := range sub {
				fields[k] = v
			}
			open = open || o
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = f.Type
	}
	return fields, open
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func prefix(path string) string {
	if path == "" {
		return ""
	}
	return path + ": "
}
