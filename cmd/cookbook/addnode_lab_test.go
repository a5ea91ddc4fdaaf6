package main

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/lab"
	"example.com/cookbook/lab/stack"
)

// bootstrapTokens returns the ids of the bootstrap token Secrets of the lab's cluster.
func bootstrapTokens(t *testing.T, s *stack.Stack) []string {
	t.Helper()
	list, err := s.CP.Client.CoreV1().Secrets("kube-system").List(context.Background(), metav1.ListOptions{FieldSelector: "type=bootstrap.kubernetes.io/token"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, sec := range list.Items {
		ids = append(ids, string(sec.Data["token-id"]))
	}
	return ids
}

var wholeToken = regexp.MustCompile(`\b[a-z0-9]{6}\.[a-z0-9]{16}\b`)

// noWholeToken fails the test if a file under dir holds a whole bootstrap token.
func noWholeToken(t *testing.T, dir string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(path)
		if m := wholeToken.Find(b); m != nil {
			t.Errorf("%s holds a bootstrap token: %s", path, m)
		}
		return nil
	})
}

// TestJoinTokenDeleted adds a worker whose first join fails: the bootstrap token of each
// join is deleted on the control node it came from, and no token is in a log or state file.
func TestJoinTokenDeleted(t *testing.T) {
	w, s := stackWorld(t, 1, 1)
	name := s.Prefix + "-worker-2"
	control := s.Prefix + "-control-1"

	s.Fleet.FailJoins(name, true)
	r := w.run("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "failed at step join") {
		t.Errorf("the run did not fail at the join:\n%s", r.stderr)
	}
	if ids := bootstrapTokens(t, s); len(ids) != 0 {
		t.Errorf("bootstrap tokens left after a failed join: %v\n%s", ids, r.stderr)
	}
	runs := w.runs()
	if len(runs) != 1 {
		t.Fatalf("%d runs", len(runs))
	}

	s.Fleet.FailJoins(name, false)
	r2 := w.run("resume", runs[0].ID)
	wantCode(t, r2, 0)
	if n := nodeOf(t, s, name); n == nil || !lab.IsReady(n) {
		t.Fatalf("node %s not Ready after the resumed run:\n%s", name, r2.stderr)
	}
	if ids := bootstrapTokens(t, s); len(ids) != 0 {
		t.Errorf("bootstrap tokens left after add-k8s-node: %v", ids)
	}

	// Each token was created and deleted on the control node; only its id was logged.
	var creates, deletes int
	for _, c := range commandsOn(s, control) {
		switch {
		case strings.Contains(c, "kubeadm token create"):
			creates++
		case strings.Contains(c, "kubeadm token delete"):
			deletes++
			id := c[strings.LastIndex(c, " ")+1:]
			if !strings.Contains(r.stderr+r2.stderr, "token_id="+id) {
				t.Errorf("token id %s is not logged", id)
			}
		}
	}
	if creates != 2 || deletes != 2 {
		t.Errorf("on %s: %d token creates, %d deletes; want 2 each: %v", control, creates, deletes, commandsOn(s, control))
	}
	if m := wholeToken.FindString(r.stderr + r2.stderr); m != "" {
		t.Errorf("a bootstrap token is in the output: %s", m)
	}
	noWholeToken(t, w.stateDir)
	noWholeToken(t, s.AuditPath)
}
