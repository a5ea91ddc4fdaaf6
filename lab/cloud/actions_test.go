package cloud

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// novaClient is a minimal Nova client for the action tests: a token, then raw requests.
type novaClient struct {
	t     *testing.T
	url   string
	token string
}

func newNovaClient(t *testing.T, c *Cloud) *novaClient {
	t.Helper()
	body := `{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"name":"Default"},"password":"pw"}}}}}`
	resp, err := http.Post(c.AuthURL()+"/auth/tokens", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("token: %s", resp.Status)
	}
	return &novaClient{t: t, url: c.URL + "/compute/v2.1", token: resp.Header.Get("X-Subject-Token")}
}

// do sends a request and returns its status and body.
func (n *novaClient) do(method, path, body string) (int, string) {
	n.t.Helper()
	req, err := http.NewRequest(method, n.url+path, bytes.NewBufferString(body))
	if err != nil {
		n.t.Fatal(err)
	}
	req.Header.Set("X-Auth-Token", n.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// state is the server's status and task_state, or "gone" once Nova no longer has it.
func (n *novaClient) state(id string) string {
	n.t.Helper()
	code, body := n.do("GET", "/servers/"+id, "")
	if code == 404 {
		return "gone"
	}
	var out struct {
		Server map[string]any `json:"server"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		n.t.Fatalf("%d %s: %v", code, body, err)
	}
	return out.Server["status"].(string) + "/" + stringOr(out.Server["OS-EXT-STS:task_state"])
}

func stringOr(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return "-"
}

// TestActionsOnADeletingServer: Nova refuses a reboot (soft or hard) and a stop of a
// server being deleted with 409 "Cannot 'reboot' instance <id> while it is in
// task_state deleting"; the server still goes away at the deletion's deadline.
func TestActionsOnADeletingServer(t *testing.T) {
	seed := Seed{Users: []User{{Name: "admin", Password: "pw"}}}
	c, err := New("127.0.0.1:0", seed, Options{DeleteTime: 1500 * time.Millisecond, RebootTime: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.AddServer(context.Background(), Server{Name: "w-1"})
	if err != nil {
		t.Fatal(err)
	}
	n := newNovaClient(t, c)
	deleted := time.Now()
	if code, body := n.do("DELETE", "/servers/"+s.ID, ""); code != 204 {
		t.Fatalf("delete: %d %s", code, body)
	}
	for _, tt := range []struct{ body, action string }{
		{`{"reboot":{"type":"SOFT"}}`, "reboot"},
		{`{"reboot":{"type":"HARD"}}`, "reboot"},
		{`{"os-stop":null}`, "stop"},
	} {
		code, body := n.do("POST", "/servers/"+s.ID+"/action", tt.body)
		want := "Cannot '" + tt.action + "' instance " + s.ID + " while it is in task_state deleting"
		if code != 409 || !strings.Contains(body, want) {
			t.Errorf("%s on a deleting server: %d %s, want 409 %q", tt.body, code, body, want)
		}
	}
	// Past the reboot time the server is still being deleted: neither gone early nor
	// left behind for good.
	time.Sleep(400 * time.Millisecond)
	if got := n.state(s.ID); got != "ACTIVE/deleting" && time.Since(deleted) < 1400*time.Millisecond {
		t.Errorf("0.4 s into a 1.5 s deletion: %s, want ACTIVE/deleting", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for n.state(s.ID) != "gone" {
		if time.Now().After(deadline) {
			t.Fatalf("5 s past the deletion time the server is still there: %s", n.state(s.ID))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d := time.Since(deleted); d < 1500*time.Millisecond {
		t.Errorf("server gone %v after the delete, before the deletion time 1.5 s", d)
	}
}

// TestRebootStates: Nova's reboot and stop by vm_state and task_state: a hard reboot
// is allowed while a reboot (soft or hard) is under way, a soft reboot and a stop are
// not; a deletion during a reboot ends at its own deadline.
func TestRebootStates(t *testing.T) {
	seed := Seed{Users: []User{{Name: "admin", Password: "pw"}}}
	c, err := New("127.0.0.1:0", seed, Options{DeleteTime: 1200 * time.Millisecond, RebootTime: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.AddServer(context.Background(), Server{Name: "w-1"})
	if err != nil {
		t.Fatal(err)
	}
	n := newNovaClient(t, c)
	action := func(body string) (int, string) {
		t.Helper()
		return n.do("POST", "/servers/"+s.ID+"/action", body)
	}
	soft, hard, stop := `{"reboot":{"type":"SOFT"}}`, `{"reboot":{"type":"HARD"}}`, `{"os-stop":null}`
	steps := []struct {
		body string
		code int
		want string // in the reply's body (409) or the server's status/task_state after (202)
	}{
		{soft, 202, "REBOOT/rebooting"},
		{soft, 409, "Cannot 'reboot' instance " + s.ID + " while it is in task_state rebooting"},
		{stop, 409, "Cannot 'stop' instance " + s.ID + " while it is in task_state rebooting"},
		{hard, 202, "HARD_REBOOT/rebooting_hard"},
		{hard, 202, "HARD_REBOOT/rebooting_hard"},
		{soft, 409, "Cannot 'reboot' instance " + s.ID + " while it is in task_state rebooting_hard"},
		{stop, 409, "Cannot 'stop' instance " + s.ID + " while it is in task_state rebooting_hard"},
	}
	for i, st := range steps {
		code, body := action(st.body)
		got := body
		if code == 202 {
			got = n.state(s.ID)
		}
		if code != st.code || !strings.Contains(got, st.want) {
			t.Errorf("step %d %s: %d %s, want %d %q", i, st.body, code, got, st.code, st.want)
		}
	}
	// Deleted during a 10 s reboot, the server is gone after the 1.2 s deletion.
	if code, body := n.do("DELETE", "/servers/"+s.ID, ""); code != 204 {
		t.Fatalf("delete: %d %s", code, body)
	}
	deadline := time.Now().Add(5 * time.Second)
	for n.state(s.ID) != "gone" {
		if time.Now().After(deadline) {
			t.Fatalf("5 s past the deletion time the server is still there: %s", n.state(s.ID))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
