// Package silences silences the alerts of nodes a run takes down on purpose, through
// Alertmanager's API v2 (typed structs over its documented HTTP API: the official client
// would pull the go-openapi runtime and bump modules Kubernetes' client depends on).
//
// A silence carries a marker in its comment naming the run and what it silences, so a run
// killed between creating a silence and recording its id finds it again instead of
// stacking a second one. Creating and expiring go through the dry-run gate; reads are
// made in dry-run too. Client returns errors; Silencer, what a run uses, turns every
// failure into one warning per run: monitoring must never block an operator.
package silences

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"example.com/cookbook/config"
	"example.com/cookbook/dryrun"
)

// Matcher is a label matcher of a silence (API v2 "matcher").
type Matcher struct {
	Name    string `json:"name"`
	Value   string `json:"value"`
	IsRegex bool   `json:"isRegex"`
	// IsEqual false negates the matcher (!= and !~); nil means true.
	IsEqual *bool `json:"isEqual,omitempty"`
}

// String writes m as Alertmanager does, e.g. instance=~"n1(:.*)?".
func (m Matcher) String() string {
	eq := m.IsEqual == nil || *m.IsEqual
	op := "="
	switch {
	case m.IsRegex && eq:
		op = "=~"
	case m.IsRegex:
		op = "!~"
	case !eq:
		op = "!="
	}
	return fmt.Sprintf("%s%s%q", m.Name, op, m.Value)
}

// Silence is a silence as the API v2 posts and returns it.
type Silence struct {
	ID        string    `json:"id,omitempty"`
	Matchers  []Matcher `json:"matchers"`
	StartsAt  time.Time `json:"startsAt"`
	EndsAt    time.Time `json:"endsAt"`
	CreatedBy string    `json:"createdBy"`
	Comment   string    `json:"comment"`
	// Status is set on silences read back.
	Status *Status `json:"status,omitempty"`
}

// Status is a silence's state.
type Status struct {
	// State is "active", "pending" or "expired".
	State string `json:"state"`
}

// Live reports whether s is active or pending: not expired.
func (s *Silence) Live() bool { return s.Status == nil || s.Status.State != "expired" }

// Options configure a Client.
type Options struct {
	// URL is the Alertmanager's base URL (required).
	URL string
	// Duration of a node's silence; config.DefaultSilenceDuration if zero.
	Duration time.Duration
	// ClusterDuration of a whole-cluster silence; config.DefaultClusterSilenceDuration if zero.
	ClusterDuration time.Duration
	// Matchers are templates for a node's matchers; config.DefaultMatchers if empty.
	Matchers []string
	// ClusterMatchers are templates for a cluster's; config.DefaultClusterMatchers if empty.
	ClusterMatchers []string
	// Author is createdBy; user@host if empty.
	Author string
	// Gate is where creates and expires pass; nil makes them.
	Gate *dryrun.Gate
	// HTTP is the client; one with a 10s timeout if nil.
	HTTP *http.Client
	// Now is the clock; time.Now if nil.
	Now func() time.Time
}

// FromConfig returns the options of a cluster's alertmanager settings (nil: none).
func FromConfig(a *config.Alertmanager, gate *dryrun.Gate) *Options {
	if a == nil {
		return nil
	}
	return &Options{URL: a.URL, Duration: a.Duration.D(), ClusterDuration: a.ClusterDuration.D(),
		Matchers: a.Matchers, ClusterMatchers: a.ClusterMatchers, Author: a.Author, Gate: gate}
}

// Client talks to one Alertmanager.
type Client struct {
	o    Options
	base *url.URL
}

// New checks the options (URL, matcher templates) and returns a client. It makes no
// request.
func New(o Options) (*Client, error) {
	u, err := url.Parse(strings.TrimSuffix(o.URL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("alertmanager: %q is not an http or https URL", o.URL)
	}
	if o.Duration == 0 {
		o.Duration = config.DefaultSilenceDuration
	}
	if o.ClusterDuration == 0 {
		o.ClusterDuration = config.DefaultClusterSilenceDuration
	}
	if len(o.Matchers) == 0 {
		o.Matchers = config.DefaultMatchers
	}
	if len(o.ClusterMatchers) == 0 {
		o.ClusterMatchers = config.DefaultClusterMatchers
	}
	for _, m := range o.Matchers {
		if _, err := expandMatcher(m, Node{}.vars()); err != nil {
			return nil, fmt.Errorf("alertmanager matcher: %w", err)
		}
	}
	for _, m := range o.ClusterMatchers {
		if _, err := expandMatcher(m, map[string]string{"cluster": "", "prefixes": ""}); err != nil {
			return nil, fmt.Errorf("alertmanager cluster matcher: %w", err)
		}
	}
	if o.Author == "" {
		o.Author = defaultAuthor()
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: 10 * time.Second}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Client{o: o, base: u}, nil
}

func defaultAuthor() string {
	name := "cookbook"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		name += "@" + h
	}
	return name
}

// URL is the Alertmanager's base URL.
func (c *Client) URL() string { return c.base.String() }

// Node is what a node's matcher templates may name.
type Node struct {
	Hostname, FQDN, Cluster, Role string
}

func (n Node) vars() map[string]string {
	return map[string]string{"hostname": n.Hostname, "fqdn": n.FQDN, "cluster": n.Cluster, "role": n.Role}
}

// expandMatcher parses a matcher template and fills its placeholders; in a regular
// expression the values are quoted, so a dot in an FQDN matches only a dot. The
// "prefixes" value is a regular expression already.
func expandMatcher(tmpl string, vars map[string]string) (Matcher, error) {
	name, op, value, err := config.SplitMatcher(tmpl)
	if err != nil {
		return Matcher{}, err
	}
	regex := op == "=~" || op == "!~"
	if regex {
		q := make(map[string]string, len(vars))
		for k, v := range vars {
			if k == "prefixes" {
				q[k] = v
			} else {
				q[k] = regexp.QuoteMeta(v)
			}
		}
		vars = q
	}
	if value, err = config.ExpandTemplate(value, vars); err != nil {
		return Matcher{}, fmt.Errorf("%s: %w", tmpl, err)
	}
	if regex {
		if _, err := regexp.Compile("^(?:" + value + ")$"); err != nil {
			return Matcher{}, fmt.Errorf("%s: not a regular expression: %w", tmpl, err)
		}
	}
	eq := op == "=" || op == "=~"
	m := Matcher{Name: name, Value: value, IsRegex: regex}
	if !eq {
		m.IsEqual = &eq
	}
	return m, nil
}

// NodeMatchers returns the matchers of a node's silence.
func (c *Client) NodeMatchers(n Node) ([]Matcher, error) {
	var out []Matcher
	for _, t := range c.o.Matchers {
		m, err := expandMatcher(t, n.vars())
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// ClusterMatchers returns the matchers of a whole-cluster silence; prefixes are the node
// name prefixes of the cluster's roles.
func (c *Client) ClusterMatchers(cluster string, prefixes []string) ([]Matcher, error) {
	q := make([]string, len(prefixes))
	for i, p := range prefixes {
		q[i] = regexp.QuoteMeta(p)
	}
	vars := map[string]string{"cluster": cluster, "prefixes": "(?:" + strings.Join(q, "|") + ")"}
	var out []Matcher
	for _, t := range c.o.ClusterMatchers {
		m, err := expandMatcher(t, vars)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// Marker is what a silence's comment ends with, naming the run and what it silences
// ("node toolsbeta-test-k8s-worker-3", "cluster toolsbeta"): how Find knows it.
func Marker(runID, target string) string {
	return fmt.Sprintf("[cookbook run %s, %s]", runID, target)
}

// Request is a silence to make.
type Request struct {
	// RunID and Target ("node X", "cluster C") make the comment's marker.
	RunID, Target string
	// Reason starts the comment ("reboot", "upgrade to v1.37").
	Reason   string
	Matchers []Matcher
	Duration time.Duration
}

// Ensure returns the id of a live silence for req: recorded (the id the run recorded, ""
// for none) if it is still live, else one that Find finds by the marker, else a new one.
// It never creates a second live silence for the same run and target. In a dry run a new
// silence is not created: its id is a fake one (Gate.FakeID), which Ensure and Expire
// know.
func (c *Client) Ensure(ctx context.Context, req Request, recorded string) (id string, created bool, err error) {
	if recorded != "" {
		if c.o.Gate.IsFake(recorded) {
			return recorded, false, nil
		}
		s, err := c.Get(ctx, recorded)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return "", false, err
		}
		if err == nil && s.Live() {
			return recorded, false, nil
		}
	}
	found, err := c.Find(ctx, req.RunID, req.Target)
	if err != nil {
		return "", false, err
	}
	if found != nil {
		return found.ID, false, nil
	}
	now := c.o.Now()
	s := Silence{
		Matchers:  req.Matchers,
		StartsAt:  now,
		EndsAt:    now.Add(req.Duration),
		CreatedBy: c.o.Author,
		Comment:   strings.TrimSpace(req.Reason + " " + Marker(req.RunID, req.Target)),
	}
	action := fmt.Sprintf("silence alerts of %s for %s (%s)", req.Target, req.Duration, matchersText(req.Matchers))
	err = c.o.Gate.Write(ctx, action, func(ctx context.Context) error {
		var err error
		id, err = c.create(ctx, s)
		return err
	}, func(context.Context) error {
		id = c.o.Gate.FakeID("silence", strings.ReplaceAll(req.Target, " ", "-"))
		return nil
	})
	if err != nil {
		return "", false, err
	}
	return id, true, nil
}

func matchersText(ms []Matcher) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = m.String()
	}
	return strings.Join(parts, ", ")
}

// SilenceNode ensures a live silence of a node's alerts for the run (see Ensure).
func (c *Client) SilenceNode(ctx context.Context, runID string, n Node, reason, recorded string) (string, bool, error) {
	ms, err := c.NodeMatchers(n)
	if err != nil {
		return "", false, err
	}
	return c.Ensure(ctx, Request{RunID: runID, Target: "node " + n.Hostname, Reason: reason, Matchers: ms, Duration: c.o.Duration}, recorded)
}

// SilenceCluster ensures a live silence of the whole cluster's alerts for the run, for
// ClusterDuration (an upgrade's --silence-cluster); prefixes are its roles' prefixes.
func (c *Client) SilenceCluster(ctx context.Context, runID, cluster string, prefixes []string, reason, recorded string) (string, bool, error) {
	ms, err := c.ClusterMatchers(cluster, prefixes)
	if err != nil {
		return "", false, err
	}
	return c.Ensure(ctx, Request{RunID: runID, Target: "cluster " + cluster, Reason: reason, Matchers: ms, Duration: c.o.ClusterDuration}, recorded)
}

// Find returns the live silence whose comment carries the marker of runID and target,
// or nil.
func (c *Client) Find(ctx context.Context, runID, target string) (*Silence, error) {
	all, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	marker := Marker(runID, target)
	for i := range all {
		if all[i].Live() && strings.HasSuffix(all[i].Comment, marker) {
			return &all[i], nil
		}
	}
	return nil, nil
}

// Expire expires the silence id. One already expired, gone, or made up by a dry run
// is nothing to do.
func (c *Client) Expire(ctx context.Context, id string) error {
	if id == "" || c.o.Gate.IsFake(id) {
		return nil
	}
	s, err := c.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if !s.Live() {
		return nil
	}
	return c.o.Gate.Write(ctx, fmt.Sprintf("expire silence %s (%s)", id, matchersText(s.Matchers)), func(ctx context.Context) error {
		return c.do(ctx, http.MethodDelete, "/api/v2/silence/"+url.PathEscape(id), nil, nil)
	}, nil)
}

// ErrNotFound is a silence the Alertmanager does not know.
var ErrNotFound = errors.New("silence not found")

// Get reads one silence.
func (c *Client) Get(ctx context.Context, id string) (*Silence, error) {
	var s Silence
	if err := c.do(ctx, http.MethodGet, "/api/v2/silence/"+url.PathEscape(id), nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// List reads every silence.
func (c *Client) List(ctx context.Context) ([]Silence, error) {
	var out []Silence
	if err := c.do(ctx, http.MethodGet, "/api/v2/silences", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

func (c *Client) create(ctx context.Context, s Silence) (string, error) {
	var resp struct {
		SilenceID string `json:"silenceID"`
	}
	if err := c.do(ctx, http.MethodPost, "/api/v2/silences", s, &resp); err != nil {
		return "", err
	}
	if resp.SilenceID == "" {
		return "", errors.New("alertmanager: created a silence but returned no id")
	}
	return resp.SilenceID, nil
}

// do makes one request; in is sent as JSON, the answer decoded into out.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, body)
	if err != nil {
		return fmt.Errorf("alertmanager: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.o.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("alertmanager %s: %w", c.base.Host, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("alertmanager %s %s: %w", method, path, err)
	}
	if resp.StatusCode == http.StatusNotFound && strings.HasPrefix(path, "/api/v2/silence/") {
		return ErrNotFound
	}
	if resp.StatusCode/100 != 2 {
		msg := strings.Join(strings.Fields(string(data)), " ")
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		return fmt.Errorf("alertmanager %s %s: %s: %s", method, path, resp.Status, msg)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("alertmanager %s %s: decode the answer: %w", method, path, err)
	}
	return nil
}

// Silencer is what a run uses: a Client whose failures are warnings. The first failure
// is logged as a warning naming the Alertmanager and saying the run goes on without
// silences; later ones are debug lines. A Silencer lives as long as its run. A nil
// Silencer (no alertmanager configured) does nothing.
type Silencer struct {
	c      *Client
	log    *slog.Logger
	warned atomic.Bool
}

// NewSilencer returns a Silencer over c logging to log (nil discards).
func NewSilencer(c *Client, log *slog.Logger) *Silencer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Silencer{c: c, log: log}
}

// Warned reports whether a failure was warned about.
func (s *Silencer) Warned() bool { return s != nil && s.warned.Load() }

// Client returns the underlying client.
func (s *Silencer) Client() *Client { return s.c }

func (s *Silencer) fail(ctx context.Context, what string, err error) {
	if s.warned.CompareAndSwap(false, true) {
		s.log.WarnContext(ctx, "Alertmanager failed; the run goes on without silences (this is said once)",
			"alertmanager", s.c.URL(), "while", what, "err", err)
		return
	}
	s.log.DebugContext(ctx, "Alertmanager failed again", "while", what, "err", err)
}

// SilenceNode returns the id of the node's live silence for the run (Client.SilenceNode),
// or "" after a warning.
func (s *Silencer) SilenceNode(ctx context.Context, runID string, n Node, reason, recorded string) string {
	if s == nil {
		return ""
	}
	id, _, err := s.c.SilenceNode(ctx, runID, n, reason, recorded)
	if err != nil {
		s.fail(ctx, "silencing node "+n.Hostname, err)
		return ""
	}
	return id
}

// SilenceCluster returns the id of the cluster's live silence for the run
// (Client.SilenceCluster), or "" after a warning.
func (s *Silencer) SilenceCluster(ctx context.Context, runID, cluster string, prefixes []string, reason, recorded string) string {
	if s == nil {
		return ""
	}
	id, _, err := s.c.SilenceCluster(ctx, runID, cluster, prefixes, reason, recorded)
	if err != nil {
		s.fail(ctx, "silencing cluster "+cluster, err)
		return ""
	}
	return id
}

// Expire expires the silence (Client.Expire) and reports whether it is gone; a failure
// is a warning.
func (s *Silencer) Expire(ctx context.Context, id string) bool {
	if s == nil || id == "" {
		return true
	}
	if err := s.c.Expire(ctx, id); err != nil {
		s.fail(ctx, "expiring silence "+id, err)
		return false
	}
	return true
}
