package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	yaml "go.yaml.in/yaml/v3"
	sigsyaml "sigs.k8s.io/yaml"
)

// maxErrors is how many problems of the YAML structure one error message lists.
const maxErrors = 5

// maxQuoted is how many characters of a value an error message quotes.
const maxQuoted = 60

// checkYAML parses data into a YAML node tree and checks it against the type of v (a
// pointer to a struct) using the json tags of its fields, so that an unknown key, a value
// of the wrong type or a duplicate key is reported with its YAML path before the data is
// decoded. It returns one line; "" means no problem was found.
func checkYAML(data []byte, v any) string {
	var doc, next yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	err := dec.Decode(&doc)
	if err == nil {
		if err = dec.Decode(&next); err == nil && len(next.Content) > 0 && next.Content[0].ShortTag() != "!!null" {
			return fmt.Sprintf("line %d: a second YAML document (after ---) would be ignored", next.Content[0].Line)
		}
		if errors.Is(err, io.EOF) {
			err = nil
		}
	}
	if errors.Is(err, io.EOF) {
		return "" // empty: the validation says what is missing
	}
	if err != nil {
		// The YAML 1.1 parser of the final decode gives the line of the problem where
		// this one often gives the line of the mapping or list around it.
		if _, err1 := sigsyaml.YAMLToJSON(data); err1 != nil {
			err = err1
		}
		msg := strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")
		return oneLine(strings.TrimPrefix(msg, "yaml: "))
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return "" // empty: the validation says what is missing
	}
	c := &checker{seen: map[seenKey]bool{}}
	c.walk(doc.Content[0], reflect.TypeOf(v), "")
	if len(c.errs) == 0 {
		return ""
	}
	msg := strings.Join(c.errs[:min(len(c.errs), maxErrors)], "; ")
	if n := len(c.errs) - maxErrors; n > 0 {
		msg += fmt.Sprintf("; and %d more", n)
	}
	return msg
}

type seenKey struct {
	n *yaml.Node
	t reflect.Type
}

type checker struct {
	errs []string
	// seen holds the anchored nodes already checked against a type, so that aliases
	// (a "billion laughs" file) do not make the walk exponential.
	seen map[seenKey]bool
}

func (c *checker) errorf(path, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	c.errs = append(c.errs, msg)
}

// walk checks node n against type t; path is n's YAML path ("" for the document).
func (c *checker) walk(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
		if n == nil {
			return
		}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Anchor != "" {
		k := seenKey{n, t}
		if c.seen[k] {
			return
		}
		c.seen[k] = true
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // null leaves the zero value
	}
	if t == durationType {
		if c.want(n, yaml.ScalarNode, "a duration", path) {
			if _, err := parseDuration(n.Value); err != nil {
				c.errorf(path, "%s is not a duration (expected one such as 10m or 1h30m)", quote(n.Value))
			}
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if c.want(n, yaml.MappingNode, "a mapping", path) {
			c.mapping(n, path, func(key *yaml.Node, kpath string) (reflect.Type, bool) {
				f, ok := fieldByKey(t, key.Value)
				if !ok {
					c.errorf(kpath, "unknown key%s", suggest(key.Value, keysOf(t)))
				}
				return f.Type, ok
			})
		}
	case reflect.Map:
		if c.want(n, yaml.MappingNode, "a mapping", path) {
			c.mapping(n, path, func(*yaml.Node, string) (reflect.Type, bool) { return t.Elem(), true })
		}
	case reflect.Slice:
		if c.want(n, yaml.SequenceNode, "a list", path) {
			for i, e := range n.Content {
				c.walk(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
			}
		}
	case reflect.String:
		c.want(n, yaml.ScalarNode, "a string", path)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if c.want(n, yaml.ScalarNode, "a whole number", path) && n.ShortTag() != "!!int" {
			c.errorf(path, "%s is not a whole number%s", quote(n.Value), quotedHint(n))
		}
	case reflect.Bool:
		if c.want(n, yaml.ScalarNode, "true or false", path) && n.ShortTag() != "!!bool" && !yaml11Bool(n) {
			c.errorf(path, "%s is not true or false%s", quote(n.Value), quotedHint(n))
		}
	}
}

// want reports whether n is of the kind the type needs, and records an error if not.
func (c *checker) want(n *yaml.Node, kind yaml.Kind, what, path string) bool {
	if n.Kind == kind {
		return true
	}
	switch n.Kind {
	case yaml.ScalarNode:
		c.errorf(path, "%s is not %s", quote(n.Value), what)
	case yaml.MappingNode:
		c.errorf(path, "found a mapping, expected %s", what)
	case yaml.SequenceNode:
		c.errorf(path, "found a list, expected %s", what)
	default:
		c.errorf(path, "expected %s", what)
	}
	return false
}

// mapping checks the keys of a mapping node, duplicates included, and walks each value
// against the type that value returns for its key.
func (c *checker) mapping(n *yaml.Node, path string, value func(key *yaml.Node, kpath string) (reflect.Type, bool)) {
	lines := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			c.errorf(path, "a key on line %d is not a string", k.Line)
			continue
		}
		if k.ShortTag() == "!!merge" {
			// "<<: *anchor" (or a list of them) merges mappings into this one.
			merged := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				merged = v.Content
			}
			for _, m := range merged {
				if m.Kind == yaml.AliasNode && m.Alias != nil {
					m = m.Alias
				}
				if m.Kind != yaml.MappingNode {
					c.errorf(path, "a merge (<<) on line %d is not of a mapping", v.Line)
					continue
				}
				c.mapping(m, path, value)
			}
			continue
		}
		kpath := join(path, k.Value)
		if first, dup := lines[k.Value]; dup {
			c.errorf(kpath, "duplicate key (lines %d and %d)", first, k.Line)
			continue
		}
		lines[k.Value] = k.Line
		if t, ok := value(k, kpath); ok {
			c.walk(v, t, kpath)
		}
	}
}

// fieldByKey finds the field of struct type t whose json name is key.
func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if name, ok := jsonName(f); ok && name == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// keysOf returns the keys a struct type accepts, in the order of its fields.
func keysOf(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		if name, ok := jsonName(t.Field(i)); ok {
			keys = append(keys, name)
		}
	}
	return keys
}

func jsonName(f reflect.StructField) (string, bool) {
	if !f.IsExported() {
		return "", false
	}
	tag := f.Tag.Get("json")
	if tag == "-" {
		return "", false
	}
	name, _, _ := strings.Cut(tag, ",")
	if name == "" {
		name = f.Name
	}
	return name, true
}

// suggest returns " (did you mean "k"?)" for the known key closest to key, when one is
// close (a different case, or at most two edits away), else the list of known keys.
func suggest(key string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if strings.EqualFold(k, key) {
			best = k
			break
		}
		if d := levenshtein(strings.ToLower(key), strings.ToLower(k)); d < bestDist && d < utf8.RuneCountInString(key) {
			best, bestDist = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return " (known keys: " + strings.Join(known, ", ") + ")"
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	if len(ra) > 100 || len(rb) > 100 {
		return 100 // no suggestion for a pathological key
	}
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// yaml11Bool reports whether n is a plain yes/no/on/off, which the final decode (YAML
// 1.1) takes for a boolean.
func yaml11Bool(n *yaml.Node) bool {
	if n.Style != 0 {
		return false // quoted or tagged
	}
	switch n.Value {
	case "y", "Y", "yes", "Yes", "YES", "on", "On", "ON",
		"n", "N", "no", "No", "NO", "off", "Off", "OFF":
		return true
	}
	return false
}

// quotedHint explains why a number or boolean in quotes is refused.
func quotedHint(n *yaml.Node) string {
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) == 0 {
		return ""
	}
	var probe yaml.Node
	if yaml.Unmarshal([]byte(n.Value), &probe) == nil && len(probe.Content) == 1 {
		switch probe.Content[0].ShortTag() {
		case "!!int", "!!bool":
			return " (remove the quotes)"
		}
	}
	return ""
}

// join appends key to a YAML path; a key that is not a plain word is quoted.
func join(path, key string) string {
	seg := key
	if !plainKey(key) {
		seg = quote(key)
	}
	if path == "" {
		return seg
	}
	return path + "." + seg
}

func plainKey(s string) bool {
	if s == "" || len(s) > maxQuoted {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./", r)) {
			return false
		}
	}
	return true
}

// quote returns s in Go quotes, cut to maxQuoted characters (then "...").
func quote(s string) string {
	if utf8.RuneCountInString(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	i, n := 0, 0
	for i = range s {
		if n == maxQuoted {
			break
		}
		n++
	}
	return strconv.Quote(s[:i]) + "..."
}

// oneLine makes an error text from elsewhere one readable line.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = strings.ToValidUTF8(s[:300], "") + "..."
	}
	return s
}
