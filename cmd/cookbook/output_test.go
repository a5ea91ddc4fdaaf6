package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestLogFormats: --log-format json gives one JSON object a line on stderr (for a log
// system), logfmt key=value lines, and an unknown format is bad input.
func TestLogFormats(t *testing.T) {
	w := newWorld(t)
	r := w.run(append([]string{"--log-format", "json"}, w.toy()...)...)
	wantCode(t, r, 0)
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		var rec struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
			Step  string `json:"step"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON line: %q (%v)", line, err)
		}
		if rec.Level == "" || rec.Msg == "" {
			t.Errorf("JSON line without level or msg: %q", line)
		}
		msgs = append(msgs, rec.Msg)
	}
	if !strings.Contains(strings.Join(msgs, "\n"), "create marker item-4") {
		t.Errorf("JSON log lacks the step lines: %v", msgs)
	}

	r = w.run(append([]string{"--log-format", "logfmt"}, w.toy("--new")...)...)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, `level=info msg="create marker item-4" step=item-4/mark progress=4/4`) {
		t.Errorf("logfmt log:\n%s", r.stderr)
	}

	r = w.run(append([]string{"--log-format", "yaml"}, w.toy("--new")...)...)
	wantCode(t, r, 2)
	if strings.TrimSpace(r.stderr) != `cookbook: error: --log-format: "yaml" is not a log format (expected text, logfmt or json)` {
		t.Errorf("bad --log-format:\n%s", r.stderr)
	}
}
