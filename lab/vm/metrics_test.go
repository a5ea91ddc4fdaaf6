package vm

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"example.com/cookbook/lab"
)

// scrape GETs http://target/metrics and returns the stuck-process count it reports.
func scrape(target string) (int, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + target + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, lab.StuckProcsMetric+" "); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, fmt.Errorf("no %s in %q", lab.StuckProcsMetric, b)
}

// TestNodeExporterPerVM: each VM serves its own /metrics on its address and the fleet's
// metrics port; a VM made to report stuck processes says
// so and the other 0; a reboot ends them; a powered-off VM answers no scrape.
func TestNodeExporterPerVM(t *testing.T) {
	op := newOperator(t)
	f := newFleet(t, op)
	f.MetricsPort = freePort(t)
	a, b := boot(t, f, "tb-metrics-1", nil), boot(t, f, "tb-metrics-2", nil)
	ta, tb := net.JoinHostPort(a.Address, strconv.Itoa(f.MetricsPort)), net.JoinHostPort(b.Address, strconv.Itoa(f.MetricsPort))
	if got := f.MetricsTargets(); len(got) != 2 || !strings.Contains(strings.Join(got, " "), ta) || !strings.Contains(strings.Join(got, " "), tb) {
		t.Fatalf("targets %v, want %s and %s", got, ta, tb)
	}
	if err := f.SetStuckProcs("tb-metrics-1", 4); err != nil {
		t.Fatal(err)
	}
	if err := f.SetStuckProcs("tb-metrics-9", 1); err == nil {
		t.Error("SetStuckProcs of no VM accepted")
	}
	for target, want := range map[string]int{ta: 4, tb: 0} {
		if got, err := scrape(target); err != nil || got != want {
			t.Errorf("%s reports %d, %v; want %d", target, got, err, want)
		}
	}

	// A reboot ends the stuck processes: 0 once the VM is back.
	old := a.BootID()
	if err := f.Reboot(context.Background(), a.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := scrape(ta); err == nil {
		t.Errorf("%s answers while its VM is down for a reboot", ta)
	}
	waitBootID(t, old, 10*time.Second, func() (string, error) { return a.BootID(), nil })
	if got, err := scrape(ta); err != nil || got != 0 {
		t.Errorf("after the reboot %s reports %d, %v; want 0", ta, got, err)
	}

	// Powered off: no answer; the other VM still answers.
	if err := f.SetStuckProcs("tb-metrics-2", 2); err != nil {
		t.Fatal(err)
	}
	if err := f.PowerOff(a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := scrape(ta); err == nil {
		t.Errorf("%s answers while its VM is powered off", ta)
	}
	if got, err := scrape(tb); err != nil || got != 2 {
		t.Errorf("%s reports %d, %v; want 2", tb, got, err)
	}
}
