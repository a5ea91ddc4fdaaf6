package vm

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"time"

	"example.com/cookbook/lab"
)

// Each VM of a Fleet with a MetricsPort serves its own node exporter (lab.NodeExporter)
// on its address while it is up, as node-exporter runs on every host of a real cluster:
// a VM that is down (rebooting, powered off) answers no scrape.

// MetricsTargets returns the node exporter target (address:MetricsPort) of every VM of
// the fleet, up or not, sorted: what a Prometheus discovering the cloud's servers would
// scrape. None without a MetricsPort.
func (f *Fleet) MetricsTargets() []string {
	if f.MetricsPort == 0 {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, v := range f.vms {
		out = append(out, net.JoinHostPort(v.Address, strconv.Itoa(f.MetricsPort)))
	}
	sort.Strings(out)
	return out
}

// SetStuckProcs makes the VM of a name report n processes stuck on NFS on its /metrics
// (lab.StuckProcsMetric) until it is rebooted: a reboot ends them.
func (f *Fleet) SetStuckProcs(name string, n int) error {
	f.mu.Lock()
	var v *VM
	for _, vm := range f.vms {
		if vm.Name == name {
			v = vm
		}
	}
	f.mu.Unlock()
	if v == nil {
		return fmt.Errorf("no VM named %s", name)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.stuckProcs = n
	return nil
}

// StuckProcs is the number of processes stuck on NFS the VM reports.
func (v *VM) StuckProcs() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.stuckProcs
}

// startExporter starts the VM's node exporter on its address, if the fleet has a
// MetricsPort; nil otherwise.
func (v *VM) startExporter() (*lab.NodeExporter, error) {
	if v.fleet.MetricsPort == 0 {
		return nil, nil
	}
	addr := net.JoinHostPort(v.Address, strconv.Itoa(v.fleet.MetricsPort))
	var e *lab.NodeExporter
	var err error
	// The port may still be held by the previous incarnation for a moment.
	for i := 0; i < 50; i++ {
		if e, err = lab.StartNodeExporter(addr, v.StuckProcs); err == nil {
			return e, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, fmt.Errorf("vm %s: node exporter: %w", v.Name, err)
}
