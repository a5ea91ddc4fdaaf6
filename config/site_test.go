package config

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestLoadExampleSite(t *testing.T) {
	c, err := Load("../testdata/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cl, _ := c.Cluster("toolsbeta")
	am := cl.Alertmanager
	if am == nil || am.URL == "" || am.Duration.D() != time.Hour || am.ClusterDuration.Or(0) != 3*time.Hour {
		t.Fatalf("alertmanager = %+v", am)
	}
	want := []Hook{{
		Command: []string{"puppetserver", "ca", "clean", "--certname", "{fqdn}"},
		On:      "toolsbeta-puppetserver-1.toolsbeta.eqiad1.wikimedia.cloud",
		Timeout: Duration(2 * time.Minute),
	}}
	if diff := cmp.Diff(want, cl.HooksAt("worker", "afterRemove")); diff != "" {
		t.Errorf("worker afterRemove hooks (-want +got):\n%s", diff)
	}
	// The cluster's hooks first, then the role's.
	if got := cl.HooksAt("control", "beforeRemove"); len(got) != 1 || got[0].Command[1] != "remove" || got[0].Timeout != 0 {
		t.Errorf("control beforeRemove hooks = %+v", got)
	}
	if got := cl.HooksAt("control", "afterRemove"); len(got) != 1 {
		t.Errorf("control afterRemove hooks = %+v", got)
	}
	if got := cl.HooksAt("control", "afterJoin"); len(got) != 1 || got[0].Timeout.Or(DefaultHookTimeout) != 5*time.Minute {
		t.Errorf("control afterJoin hooks = %+v", got)
	}
	if got := cl.HooksAt("worker", "beforeDrain"); len(got) != 0 {
		t.Errorf("worker beforeDrain hooks = %+v", got)
	}
}

func TestSiteParseErrors(t *testing.T) {
	const am = "\n    alertmanager: {url: \"http://am:9093\"}"
	const hk = "\n    hooks:\n      afterRemove:\n        - command: [puppetserver, ca, clean, --certname, \"{fqdn}\"]\n          on: puppet.example\n"
	tests := []struct {
		name    string
		yaml    string
		wantErr string
	}{
		{name: "alertmanager", yaml: strings.Replace(base, "\n    roles:", am+"\n    roles:", 1)},
		{name: "alertmanager full", yaml: strings.Replace(base, "\n    roles:",
			"\n    alertmanager: {url: \"https://am\", duration: 30m, clusterDuration: 3h, author: me, matchers: ['instance=~\"{fqdn}\"', 'cluster=\"{cluster}\"'], clusterMatchers: ['project=\"{cluster}\"']}\n    roles:", 1)},
		{name: "prometheus", yaml: strings.Replace(base, "\n    roles:", "\n    prometheus: {url: \"http://prom:9090\", query: 'up == 0'}\n    roles:", 1)},
		{name: "prometheus without url", yaml: strings.Replace(base, "\n    roles:", "\n    prometheus: {query: 'up == 0'}\n    roles:", 1),
			wantErr: "clusters.toolsbeta.prometheus.url: required"},
		{name: "prometheus bad url", yaml: strings.Replace(base, "\n    roles:", "\n    prometheus: {url: \"prom:9090\"}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.prometheus.url: "prom:9090" is not an http or https URL`},
		{name: "prometheus unknown key", yaml: strings.Replace(base, "\n    roles:", "\n    prometheus: {url: \"http://prom\", qurey: x}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.prometheus.qurey: unknown key (did you mean "query"?)`},
		{name: "alertmanager without url", yaml: strings.Replace(base, "\n    roles:", "\n    alertmanager: {duration: 1h}\n    roles:", 1),
			wantErr: "clusters.toolsbeta.alertmanager.url: required"},
		{name: "alertmanager bad url", yaml: strings.Replace(base, "\n    roles:", "\n    alertmanager: {url: \"am:9093\"}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.alertmanager.url: "am:9093" is not an http or https URL`},
		{name: "alertmanager bad duration", yaml: strings.Replace(base, "\n    roles:", "\n    alertmanager: {url: \"http://am\", duration: 3}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.alertmanager.duration: "3" is not a duration (expected one such as 10m or 1h30m)`},
		{name: "alertmanager negative duration", yaml: strings.Replace(base, "\n    roles:", "\n    alertmanager: {url: \"http://am\", duration: -1h}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.alertmanager.duration: -1h0m0s is negative`},
		{name: "alertmanager unknown key", yaml: strings.Replace(base, "\n    roles:", "\n    alertmanager: {url: \"http://am\", matcher: [a]}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.alertmanager.matcher: unknown key (did you mean "matchers"?)`},
		{name: "alertmanager bad matcher", yaml: strings.Replace(base, "\n    roles:", "\n    alertmanager: {url: \"http://am\", matchers: [instance]}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.alertmanager.matchers[0]: "instance" is not a matcher`},
		{name: "alertmanager unknown placeholder", yaml: strings.Replace(base, "\n    roles:", "\n    alertmanager: {url: \"http://am\", matchers: ['instance=\"{host}\"']}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.alertmanager.matchers[0]: unknown placeholder {host} (known: {cluster}, {fqdn}, {hostname}, {role})`},
		{name: "cluster matcher with a node placeholder", yaml: strings.Replace(base, "\n    roles:", "\n    alertmanager: {url: \"http://am\", clusterMatchers: ['instance=\"{hostname}\"']}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.alertmanager.clusterMatchers[0]: unknown placeholder {hostname}`},
		{name: "hooks", yaml: strings.Replace(base, "\n    roles:", hk+"    roles:", 1)},
		{name: "hook on the node itself", yaml: strings.Replace(base, "\n    roles:", strings.Replace(hk, "puppet.example", `"{fqdn}"`, 1)+"    roles:", 1)},
		{name: "quoted on key", yaml: strings.Replace(base, "\n    roles:", strings.Replace(hk, "on:", `"on":`, 1)+"    roles:", 1)},
		{name: "hook unknown placeholder", yaml: strings.Replace(base, "\n    roles:", strings.Replace(hk, "{fqdn}", "{node}", 1)+"    roles:", 1),
			wantErr: `clusters.toolsbeta.hooks.afterRemove[0].command[4]: unknown placeholder {node} (known: {address}, {cluster}, {fqdn}, {hostname}, {role}, {server_id})`},
		{name: "hook unknown point", yaml: strings.Replace(base, "\n    roles:", strings.Replace(hk, "afterRemove", "afterRemoval", 1)+"    roles:", 1),
			wantErr: `clusters.toolsbeta.hooks.afterRemoval: unknown key (did you mean "afterRemove"?)`},
		{name: "hook unknown key", yaml: strings.Replace(base, "\n    roles:", strings.Replace(hk, "on:", "host:", 1)+"    roles:", 1),
			wantErr: `clusters.toolsbeta.hooks.afterRemove[0].host: unknown key`},
		{name: "hook key true is not on", yaml: strings.Replace(base, "\n    roles:", strings.Replace(hk, "on:", `"true":`, 1)+"    roles:", 1),
			wantErr: `clusters.toolsbeta.hooks.afterRemove[0].true: unknown key`},
		{name: "hook command a string", yaml: strings.Replace(base, "\n    roles:", "\n    hooks: {afterJoin: [{command: \"echo hi\"}]}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.hooks.afterJoin[0].command: "echo hi" is not a list`},
		{name: "hook empty command", yaml: strings.Replace(base, "\n    roles:", "\n    hooks: {afterJoin: [{on: puppet}]}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.hooks.afterJoin[0].command: required (an argv list)`},
		{name: "hook bad host", yaml: strings.Replace(base, "\n    roles:", "\n    hooks: {afterJoin: [{command: [x], on: \"a b\"}]}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.hooks.afterJoin[0].on: "a b" is not a hostname`},
		{name: "hook bad timeout", yaml: strings.Replace(base, "\n    roles:", "\n    hooks: {afterJoin: [{command: [x], timeout: ten}]}\n    roles:", 1),
			wantErr: `clusters.toolsbeta.hooks.afterJoin[0].timeout: "ten" is not a duration`},
		{name: "role hook", yaml: strings.Replace(base, "prefix: toolsbeta-test-k8s-worker\n", "prefix: toolsbeta-test-k8s-worker\n        hooks: {beforeDrain: [{command: [x, \"{roles}\"]}]}\n", 1),
			wantErr: `clusters.toolsbeta.roles.worker.hooks.beforeDrain[0].command[1]: unknown placeholder {roles}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("test.yaml", []byte(tt.yaml))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestExpandTemplate(t *testing.T) {
	vars := map[string]string{"fqdn": "n1.example", "hostname": "n1"}
	tests := []struct{ in, want, wantErr string }{
		{in: "--certname={fqdn}", want: "--certname=n1.example"},
		{in: "{hostname}{hostname}", want: "n1n1"},
		{in: `{"json": true} {Upper} {}`, want: `{"json": true} {Upper} {}`},
		{in: "{nope}", wantErr: "unknown placeholder {nope} (known: {fqdn}, {hostname})"},
	}
	for _, tt := range tests {
		got, err := ExpandTemplate(tt.in, vars)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("ExpandTemplate(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ExpandTemplate(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestSplitMatcher(t *testing.T) {
	tests := []struct{ in, name, op, value string }{
		{`instance=~"{hostname}(:.*)?"`, "instance", "=~", "{hostname}(:.*)?"},
		{`job != node`, "job", "!=", "node"},
		{`a!~"x\"y"`, "a", "!~", `x"y`},
		{`severity=page`, "severity", "=", "page"},
	}
	for _, tt := range tests {
		n, op, v, err := SplitMatcher(tt.in)
		if err != nil || n != tt.name || op != tt.op || v != tt.value {
			t.Errorf("SplitMatcher(%q) = %q %q %q %v", tt.in, n, op, v, err)
		}
	}
	for _, bad := range []string{"", "instance", `a="unterminated`, "a=", "1a=b"} {
		if _, _, _, err := SplitMatcher(bad); err == nil {
			t.Errorf("SplitMatcher(%q) accepted", bad)
		}
	}
}
