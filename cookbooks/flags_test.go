package cookbooks

import (
	"testing"
	"time"
)

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		10 * time.Minute: "10m", time.Hour: "1h", 90 * time.Second: "1m30s", 30 * time.Second: "30s", 0: "0s",
		time.Hour + 30*time.Minute: "1h30m",
	} {
		if got := ShortDuration(d); got != want {
			t.Errorf("ShortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestUnique(t *testing.T) {
	if err := unique("hostname-list", []string{"a", "b"}); err != nil {
		t.Error(err)
	}
	err := unique("hostname-list", []string{"a", "b", "a"})
	if err == nil || err.Error() != "--hostname-list: a is listed twice" {
		t.Errorf("err = %v", err)
	}
}
