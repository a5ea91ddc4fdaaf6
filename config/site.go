package config

import (
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Alertmanager is where a run silences the alerts of the nodes it takes down on purpose
// (Alertmanager API v2). A failing Alertmanager is a warning, never a failed run.
type Alertmanager struct {
	// URL is the Alertmanager's base URL, e.g. http://alertmanager.example.org:9093.
	URL string `json:"url"`
	// Duration is how long a node's silence lasts; DefaultSilenceDuration if zero. The run
	// expires it earlier, when the node is back.
	Duration Duration `json:"duration,omitempty"`
	// ClusterDuration is how long a whole-cluster silence (an upgrade) lasts;
	// DefaultClusterSilenceDuration if zero.
	ClusterDuration Duration `json:"clusterDuration,omitempty"`
	// Matchers are a node's silence matchers, templates with the placeholders of
	// MatcherPlaceholders; empty means DefaultMatchers.
	Matchers []string `json:"matchers,omitempty"`
	// ClusterMatchers are the whole-cluster silence's matchers, templates with the
	// placeholders of ClusterMatcherPlaceholders; empty means DefaultClusterMatchers.
	ClusterMatchers []string `json:"clusterMatchers,omitempty"`
	// Author is the silences' createdBy; empty means user@host of the operator.
	Author string `json:"author,omitempty"`
}

// Prometheus is where reboot-stuck-workers asks which nodes are stuck: the nodes for
// which Query returns a value above zero (matched by their instance label, hostname or
// hostname:port). A failing Prometheus fails the run before any change.
type Prometheus struct {
	// URL is the Prometheus' base URL, e.g. http://prometheus.example.org:9090.
	URL string `json:"url"`
	// Query is a PromQL instant query with an instance label; empty means
	// DefaultStuckQuery.
	Query string `json:"query,omitempty"`
}

// DefaultStuckQuery is Toolforge's: the count of processes stuck on NFS per instance.
const DefaultStuckQuery = `sum(prometheus_k8s_nfs_stuck_total_procs) by (instance) > 0`

// StuckQuery is the configured query or DefaultStuckQuery.
func (pr *Prometheus) StuckQuery() string {
	if strings.TrimSpace(pr.Query) == "" {
		return DefaultStuckQuery
	}
	return pr.Query
}

func (pr *Prometheus) validate(p string) []error {
	if pr.URL == "" {
		return []error{fmt.Errorf("%s.url: required", p)}
	} else if u, err := url.Parse(pr.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return []error{fmt.Errorf("%s.url: %s is not an http or https URL", p, quote(pr.URL))}
	}
	return nil
}

// Silence defaults.
const (
	DefaultSilenceDuration        = time.Hour
	DefaultClusterSilenceDuration = 3 * time.Hour
)

// Matcher templates: Prometheus matcher syntax (name, one of = != =~ !~, a value that
// may be double-quoted) with placeholders in braces.
var (
	DefaultMatchers            = []string{`instance=~"{hostname}(:.*)?"`}
	DefaultClusterMatchers     = []string{`instance=~"{prefixes}-[0-9]+(:.*)?"`}
	MatcherPlaceholders        = []string{"hostname", "fqdn", "cluster", "role"}
	ClusterMatcherPlaceholders = []string{"cluster", "prefixes"}
	// HookPlaceholders are what a hook's command and its `on` may use.
	HookPlaceholders = []string{"hostname", "fqdn", "role", "cluster", "server_id", "address"}
)

// Hooks are commands run at named points of a node's life, in order.
type Hooks struct {
	AfterCreate  []Hook `json:"afterCreate,omitempty"`
	AfterJoin    []Hook `json:"afterJoin,omitempty"`
	BeforeDrain  []Hook `json:"beforeDrain,omitempty"`
	BeforeRemove []Hook `json:"beforeRemove,omitempty"`
	AfterRemove  []Hook `json:"afterRemove,omitempty"`
}

// HookPoints are the names of the points hooks run at, in the order of a node's life.
var HookPoints = []string{"afterCreate", "afterJoin", "beforeDrain", "beforeRemove", "afterRemove"}

// At returns the hooks of the named point (one of HookPoints); nil for another name.
func (h Hooks) At(point string) []Hook {
	switch point {
	case "afterCreate":
		return h.AfterCreate
	case "afterJoin":
		return h.AfterJoin
	case "beforeDrain":
		return h.BeforeDrain
	case "beforeRemove":
		return h.BeforeRemove
	case "afterRemove":
		return h.AfterRemove
	}
	return nil
}

// HooksAt returns the hooks a node of role runs at point: the cluster's, then the role's.
func (cl *Cluster) HooksAt(role, point string) []Hook {
	out := append([]Hook(nil), cl.Hooks.At(point)...)
	if r, ok := cl.Roles[role]; ok && r != nil {
		out = append(out, r.Hooks.At(point)...)
	}
	return out
}

// Hook is one configured command.
type Hook struct {
	// Command is an argv list with placeholders (HookPlaceholders) in braces.
	Command []string `json:"command"`
	// On is the host the command runs on over SSH (it may use placeholders: {fqdn} is the
	// node itself); empty runs it on the operator's host.
	On string `json:"on,omitempty"`
	// Timeout bounds the command; DefaultHookTimeout if zero.
	Timeout Duration `json:"timeout,omitempty"`
}

// DefaultHookTimeout bounds a hook without a timeout.
const DefaultHookTimeout = 10 * time.Minute

// UnmarshalJSON decodes a hook strictly. The final decode reads YAML 1.1, where a plain
// `on` key is the boolean true; the YAML 1.2 check before it has already refused a key
// that really is "true", so "true" here is `on`.
func (h *Hook) UnmarshalJSON(b []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if v, ok := m["true"]; ok {
		m["on"] = v
		delete(m, "true")
	}
	type plain Hook
	var p plain
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return err
	}
	*h = Hook(p)
	return nil
}

// Duration is a duration written as Go writes one ("10m", "1h30m").
type Duration time.Duration

var durationType = reflect.TypeOf(Duration(0))

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Or returns d, or def when d is zero.
func (d Duration) Or(def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// MarshalJSON writes d as a string such as "10m0s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a string such as "10m", or 0.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "0" { // a bare 0, which the YAML check accepts as a duration
		*d = 0
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration must be a string such as 10m: %w", err)
	}
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func parseDuration(s string) (time.Duration, error) {
	if s == "0" {
		return 0, nil
	}
	return time.ParseDuration(s)
}

var placeholderRE = regexp.MustCompile(`\{([a-z_]+)\}`)

// ExpandTemplate replaces each {name} in s by vars[name]. A {name} that vars lacks is an
// error naming it and the known names; other braces are left as they are.
func ExpandTemplate(s string, vars map[string]string) (string, error) {
	var bad string
	out := placeholderRE.ReplaceAllStringFunc(s, func(m string) string {
		v, ok := vars[m[1:len(m)-1]]
		if !ok && bad == "" {
			bad = m
		}
		return v
	})
	if bad != "" {
		known := make([]string, 0, len(vars))
		for _, k := range sortedKeys(vars) {
			known = append(known, "{"+k+"}")
		}
		return "", fmt.Errorf("unknown placeholder %s (known: %s)", bad, strings.Join(known, ", "))
	}
	return out, nil
}

// CheckTemplate reports an unknown placeholder in s.
func CheckTemplate(s string, known []string) error {
	vars := make(map[string]string, len(known))
	for _, k := range known {
		vars[k] = ""
	}
	_, err := ExpandTemplate(s, vars)
	return err
}

var matcherRE = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$`)

// SplitMatcher splits a matcher such as `instance=~"x(:.*)?"` into its label name, its
// operator (= != =~ !~) and its value (unquoted when it was double-quoted).
func SplitMatcher(s string) (name, op, value string, err error) {
	m := matcherRE.FindStringSubmatch(s)
	if m == nil {
		return "", "", "", fmt.Errorf("%s is not a matcher (expected name=\"value\", with = != =~ or !~)", quote(s))
	}
	value = m[3]
	if strings.HasPrefix(value, `"`) {
		if value, err = strconv.Unquote(value); err != nil {
			return "", "", "", fmt.Errorf("%s is not a matcher (its value is not a valid quoted string)", quote(s))
		}
	}
	if value == "" {
		return "", "", "", fmt.Errorf("%s is not a matcher (empty value)", quote(s))
	}
	return m[1], m[2], value, nil
}

func (a *Alertmanager) validate(p string) []error {
	var errs []error
	if a.URL == "" {
		errs = append(errs, fmt.Errorf("%s.url: required", p))
	} else if u, err := url.Parse(a.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("%s.url: %s is not an http or https URL", p, quote(a.URL)))
	}
	if a.Duration < 0 {
		errs = append(errs, fmt.Errorf("%s.duration: %s is negative", p, a.Duration.D()))
	}
	if a.ClusterDuration < 0 {
		errs = append(errs, fmt.Errorf("%s.clusterDuration: %s is negative", p, a.ClusterDuration.D()))
	}
	check := func(key string, list []string, known []string) {
		for i, m := range list {
			if _, _, _, err := SplitMatcher(m); err != nil {
				errs = append(errs, fmt.Errorf("%s.%s[%d]: %w", p, key, i, err))
			} else if err := CheckTemplate(m, known); err != nil {
				errs = append(errs, fmt.Errorf("%s.%s[%d]: %w", p, key, i, err))
			}
		}
	}
	check("matchers", a.Matchers, MatcherPlaceholders)
	check("clusterMatchers", a.ClusterMatchers, ClusterMatcherPlaceholders)
	return errs
}

func (h Hooks) validate(p string) []error {
	var errs []error
	for _, point := range HookPoints {
		for i, hk := range h.At(point) {
			hp := fmt.Sprintf("%s.%s[%d]", p, point, i)
			if len(hk.Command) == 0 || hk.Command[0] == "" {
				errs = append(errs, fmt.Errorf("%s.command: required (an argv list)", hp))
			}
			for j, a := range hk.Command {
				if err := CheckTemplate(a, HookPlaceholders); err != nil {
					errs = append(errs, fmt.Errorf("%s.command[%d]: %w", hp, j, err))
				}
			}
			if strings.Contains(hk.On, "{") {
				if err := CheckTemplate(hk.On, HookPlaceholders); err != nil {
					errs = append(errs, fmt.Errorf("%s.on: %w", hp, err))
				}
			} else if hk.On != "" {
				if err := CheckDomain(hk.On); err != nil {
					errs = append(errs, fmt.Errorf("%s.on: %s is not a hostname", hp, quote(hk.On)))
				}
			}
			if hk.Timeout < 0 {
				errs = append(errs, fmt.Errorf("%s.timeout: %s is negative", hp, hk.Timeout.D()))
			}
		}
	}
	return errs
}
