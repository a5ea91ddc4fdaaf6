package silences

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"example.com/cookbook/dryrun"
	"example.com/cookbook/lab"
)

func TestMatchers(t *testing.T) {
	c, err := New(Options{URL: "http://am:9093", Matchers: []string{`instance=~"{hostname}(:.*)?"`, `fqdn="{fqdn}"`, `role!~"{role}"`, `cluster!={cluster}`}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.NodeMatchers(Node{Hostname: "tb-worker-1", FQDN: "tb-worker-1.tb.example", Cluster: "tb", Role: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, m := range got {
		texts = append(texts, m.String())
	}
	want := []string{`instance=~"tb-worker-1(:.*)?"`, `fqdn="tb-worker-1.tb.example"`, `role!~"worker"`, `cluster!="tb"`}
	if diff := cmp.Diff(want, texts); diff != "" {
		t.Errorf("node matchers (-want +got):\n%s", diff)
	}
	// In a regular expression the values are quoted: a dot matches only a dot.
	c, _ = New(Options{URL: "http://am", Matchers: []string{`instance=~"{fqdn}:9100"`}})
	got, _ = c.NodeMatchers(Node{FQDN: "n1.tb.example"})
	if got[0].Value != `n1\.tb\.example:9100` {
		t.Errorf("regex value = %q", got[0].Value)
	}
	got, err = c.ClusterMatchers("tb", []string{"tb-worker", "tb-control"})
	if err != nil || len(got) != 1 || got[0].String() != `instance=~"(?:tb-worker|tb-control)-[0-9]+(:.*)?"` {
		t.Errorf("cluster matchers = %v, %v", got, err)
	}
	for _, bad := range [][]string{{`instance="{host}"`}, {`instance`}, {`instance=~"(("`}} {
		if _, err := New(Options{URL: "http://am", Matchers: bad}); err == nil {
			t.Errorf("New accepted matchers %q", bad)
		}
	}
	if _, err := New(Options{URL: "am:9093"}); err == nil {
		t.Error("New accepted a URL without a scheme")
	}
}

type fixture struct {
	am   *lab.Alertmanager
	c    *Client
	gate *dryrun.Gate
	now  time.Time
}

func newFixture(t *testing.T, dryRun bool) *fixture {
	am := lab.NeedAlertmanager(t)
	gate := &dryrun.Gate{DryRun: dryRun}
	c, err := New(Options{URL: am.URL, Gate: gate, Author: "test@lab", Duration: 30 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{am: am, c: c, gate: gate}
}

// live returns the live silences on the Alertmanager.
func (f *fixture) live(t *testing.T) []Silence {
	t.Helper()
	all, err := f.c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []Silence
	for _, s := range all {
		if s.Live() {
			out = append(out, s)
		}
	}
	return out
}

func node(name string) Node {
	return Node{Hostname: name, FQDN: name + ".tb.example", Cluster: "tb", Role: "worker"}
}

// TestSilencePerNodeReadBackExpire: one silence per node, read back through the API and
// with amtool, expired; expiring twice is harmless.
func TestSilencePerNodeReadBackExpire(t *testing.T) {
	f := newFixture(t, false)
	ctx := context.Background()
	const run = "20261125-041502-3f9a1c"
	ids := map[string]string{}
	for _, n := range []string{"tb-worker-1", "tb-worker-2"} {
		id, created, err := f.c.SilenceNode(ctx, run, node(n), "roll-reboot", "")
		if err != nil || !created || id == "" {
			t.Fatalf("SilenceNode(%s) = %q, %v, %v", n, id, created, err)
		}
		ids[n] = id
	}
	s, err := f.c.Get(ctx, ids["tb-worker-1"])
	if err != nil {
		t.Fatal(err)
	}
	if s.Status.State != "active" || s.CreatedBy != "test@lab" ||
		s.Comment != "roll-reboot [cookbook run "+run+", node tb-worker-1]" ||
		len(s.Matchers) != 1 || s.Matchers[0].String() != `instance=~"tb-worker-1(:.*)?"` {
		t.Errorf("silence read back = %+v", s)
	}
	if d := s.EndsAt.Sub(s.StartsAt); d < 29*time.Minute || d > 31*time.Minute {
		t.Errorf("silence lasts %s, want 30m", d)
	}

	// amtool, from the same package, sees both.
	out, err := f.am.Amtool(ctx, "silence", "query", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var fromAmtool []Silence
	if err := json.Unmarshal([]byte(out), &fromAmtool); err != nil {
		t.Fatalf("amtool output %q: %v", out, err)
	}
	var gotIDs, wantIDs []string
	for _, s := range fromAmtool {
		gotIDs = append(gotIDs, s.ID)
		if !strings.Contains(s.Comment, run) {
			t.Errorf("amtool: comment %q does not name the run", s.Comment)
		}
	}
	for _, id := range ids {
		wantIDs = append(wantIDs, id)
	}
	sort.Strings(gotIDs)
	sort.Strings(wantIDs)
	if diff := cmp.Diff(wantIDs, gotIDs); diff != "" {
		t.Errorf("amtool silence query ids (-want +got):\n%s", diff)
	}

	// An alert of the node (host:port, as Prometheus labels targets) is silenced; another
	// node's is not.
	postAlert(t, f.am.URL, "tb-worker-1:9100")
	postAlert(t, f.am.URL, "tb-worker-10:9100")
	waitSilenced(t, f.am.URL, map[string]bool{"tb-worker-1:9100": true, "tb-worker-10:9100": false})

	for _, id := range ids {
		if err := f.c.Expire(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := f.c.Expire(ctx, id); err != nil {
			t.Errorf("second Expire(%s) = %v", id, err)
		}
	}
	if live := f.live(t); len(live) != 0 {
		t.Errorf("live silences after expiring = %+v", live)
	}
	if s, _ := f.c.Get(ctx, ids["tb-worker-2"]); s == nil || s.Status.State != "expired" {
		t.Errorf("silence after Expire = %+v", s)
	}
	if out, err := f.am.Amtool(ctx, "silence", "query", "-q"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("amtool silence query after expiring = %q, %v", out, err)
	}
	if err := f.c.Expire(ctx, "00000000-0000-0000-0000-000000000000"); err != nil {
		t.Errorf("Expire of an unknown silence = %v", err)
	}
}

func postAlert(t *testing.T, base, instance string) {
	t.Helper()
	body := `[{"labels": {"alertname": "NodeDown", "instance": "` + instance + `"}}]`
	resp, err := http.Post(base+"/api/v2/alerts", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("post alert: %s", resp.Status)
	}
}

func waitSilenced(t *testing.T, base string, want map[string]bool) {
	t.Helper()
	var got map[string]bool
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get(base + "/api/v2/alerts")
		if err != nil {
			t.Fatal(err)
		}
		var alerts []struct {
			Labels map[string]string `json:"labels"`
			Status struct {
				SilencedBy []string `json:"silencedBy"`
			} `json:"status"`
		}
		err = json.NewDecoder(resp.Body).Decode(&alerts)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		got = map[string]bool{}
		for _, a := range alerts {
			got[a.Labels["instance"]] = len(a.Status.SilencedBy) > 0
		}
		if cmp.Equal(want, got) {
			return
		}
	}
	t.Errorf("silenced alerts = %v, want %v", got, want)
}

// TestResumeReusesTheSilence: a resumed run (the id recorded, or lost by a kill between
// the create and the record) gets the same silence; one that expired meanwhile is replaced
// by one new silence, never stacked.
func TestResumeReusesTheSilence(t *testing.T) {
	f := newFixture(t, false)
	ctx := context.Background()
	const run = "20261125-041502-aaaaaa"
	n := node("tb-worker-3")
	id, created, err := f.c.SilenceNode(ctx, run, n, "reboot", "")
	if err != nil || !created {
		t.Fatalf("first SilenceNode = %q, %v, %v", id, created, err)
	}
	for _, tt := range []struct{ name, recorded string }{
		{"recorded id", id},
		{"killed before the id was recorded", ""},
		{"recorded id unknown to the Alertmanager", "00000000-0000-0000-0000-000000000000"},
	} {
		got, created, err := f.c.SilenceNode(ctx, run, n, "reboot", tt.recorded)
		if err != nil || created || got != id {
			t.Errorf("%s: SilenceNode = %q, created %v, %v; want %q reused", tt.name, got, created, err, id)
		}
	}
	// Another run, or another node, gets its own.
	other, created, err := f.c.SilenceNode(ctx, "20261125-050000-bbbbbb", n, "reboot", "")
	if err != nil || !created || other == id {
		t.Errorf("another run's SilenceNode = %q, %v, %v", other, created, err)
	}
	if live := f.live(t); len(live) != 2 {
		t.Fatalf("%d live silences, want 2: %+v", len(live), live)
	}
	// The recorded silence expired (it outlived its duration, or was expired by hand).
	if err := f.c.Expire(ctx, id); err != nil {
		t.Fatal(err)
	}
	again, created, err := f.c.SilenceNode(ctx, run, n, "reboot", id)
	if err != nil || !created || again == id {
		t.Errorf("SilenceNode after expiry = %q, %v, %v; want a new one", again, created, err)
	}
	if same, created, _ := f.c.SilenceNode(ctx, run, n, "reboot", ""); same != again || created {
		t.Errorf("SilenceNode after the replacement = %q (created %v), want %q", same, created, again)
	}
	if live := f.live(t); len(live) != 2 {
		t.Errorf("%d live silences, want 2: %+v", len(live), live)
	}
}

// TestSilenceCluster: a whole-cluster silence matches every node of the roles' prefixes.
func TestSilenceCluster(t *testing.T) {
	f := newFixture(t, false)
	ctx := context.Background()
	const run = "20261125-060000-cccccc"
	id, created, err := f.c.SilenceCluster(ctx, run, "tb", []string{"tb-worker", "tb-control"}, "upgrade to v1.37.2", "")
	if err != nil || !created {
		t.Fatalf("SilenceCluster = %q, %v, %v", id, created, err)
	}
	s, err := f.c.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if d := s.EndsAt.Sub(s.StartsAt); d < 179*time.Minute || d > 181*time.Minute {
		t.Errorf("cluster silence lasts %s, want the default 3h", d)
	}
	if again, created, _ := f.c.SilenceCluster(ctx, run, "tb", []string{"tb-worker", "tb-control"}, "upgrade", ""); again != id || created {
		t.Errorf("second SilenceCluster = %q (created %v), want %q", again, created, id)
	}
	postAlert(t, f.am.URL, "tb-worker-12:9100")
	postAlert(t, f.am.URL, "tb-control-1")
	postAlert(t, f.am.URL, "other-host-1:9100")
	waitSilenced(t, f.am.URL, map[string]bool{"tb-worker-12:9100": true, "tb-control-1": true, "other-host-1:9100": false})
}

// TestDryRunCreatesNothing: a dry run reads for real, says what it would do and creates
// and expires nothing.
func TestDryRunCreatesNothing(t *testing.T) {
	f := newFixture(t, true)
	ctx := context.Background()
	var buf bytes.Buffer
	f.gate.Log = slog.New(slog.NewTextHandler(&buf, nil))
	id, created, err := f.c.SilenceNode(ctx, "20261125-070000-dddddd", node("tb-worker-4"), "reboot", "")
	if err != nil || !created || !f.gate.IsFake(id) {
		t.Fatalf("dry-run SilenceNode = %q, %v, %v", id, created, err)
	}
	// A resumed rehearsal keeps the fake id; expiring it makes no request.
	if again, created, err := f.c.SilenceNode(ctx, "20261125-070000-dddddd", node("tb-worker-4"), "reboot", id); again != id || created || err != nil {
		t.Errorf("dry-run SilenceNode with the fake id = %q, %v, %v", again, created, err)
	}
	if err := f.c.Expire(ctx, id); err != nil {
		t.Fatal(err)
	}
	if all, _ := f.c.List(ctx); len(all) != 0 {
		t.Errorf("a dry run made silences: %+v", all)
	}
	if _, skipped := f.gate.Counts(); skipped != 1 {
		t.Errorf("%d writes skipped, want 1", skipped)
	}
	if !strings.Contains(buf.String(), `DRY-RUN: would silence alerts of node tb-worker-4 for 30m0s (instance=~\"tb-worker-4(:.*)?\")`) {
		t.Errorf("dry-run log = %s", buf.String())
	}

	// Expiring a real silence in a dry run is only said.
	real := &dryrun.Gate{}
	rc, _ := New(Options{URL: f.am.URL, Gate: real})
	rid, _, err := rc.SilenceNode(ctx, "20261125-070000-eeeeee", node("tb-worker-5"), "reboot", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.c.Expire(ctx, rid); err != nil {
		t.Fatal(err)
	}
	if s, _ := f.c.Get(ctx, rid); s == nil || s.Status.State != "active" {
		t.Errorf("a dry-run expire changed the silence: %+v", s)
	}
}

// TestUnreachableWarnsOnce: an Alertmanager that does not answer is one warning for the
// run, and no error.
func TestUnreachableWarnsOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	c, err := New(Options{URL: "http://" + addr, HTTP: &http.Client{Timeout: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	s := NewSilencer(c, slog.New(slog.NewTextHandler(&buf, nil)))
	ctx := context.Background()
	for _, n := range []string{"tb-worker-1", "tb-worker-2"} {
		if id := s.SilenceNode(ctx, "20261125-080000-ffffff", node(n), "reboot", ""); id != "" {
			t.Errorf("SilenceNode = %q with no Alertmanager", id)
		}
	}
	if s.SilenceCluster(ctx, "20261125-080000-ffffff", "tb", []string{"tb-worker"}, "upgrade", "") != "" {
		t.Error("SilenceCluster returned an id with no Alertmanager")
	}
	if s.Expire(ctx, "some-id") {
		t.Error("Expire reported success with no Alertmanager")
	}
	if !s.Warned() {
		t.Error("Warned() = false")
	}
	if n := strings.Count(buf.String(), "level=WARN"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), addr) {
		t.Errorf("the warning does not name the Alertmanager: %s", buf.String())
	}
	// No alertmanager configured: a nil Silencer does nothing.
	var none *Silencer
	if none.SilenceNode(ctx, "r", node("n"), "", "") != "" || !none.Expire(ctx, "x") || none.Warned() {
		t.Error("a nil Silencer did something")
	}
}
