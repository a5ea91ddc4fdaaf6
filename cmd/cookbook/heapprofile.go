//go:build heapprofile

package main

// Built only with -tags heapprofile (the roll-reboot benchmark's BENCH_HEAPPROFILE): every
// second, when the heap in use is the largest seen so far, its profile is written to the
// file named by COOKBOOK_HEAPPROFILE, so that the file ends up holding the heap at its peak.
// Not in the binary operators run.

import (
	"os"
	"runtime"
	"runtime/pprof"
	"time"
)

func init() {
	path := os.Getenv("COOKBOOK_HEAPPROFILE")
	if path == "" {
		return
	}
	runtime.MemProfileRate = 64 << 10
	go func() {
		var peak uint64
		var ms runtime.MemStats
		for range time.Tick(time.Second) {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse <= peak {
				continue
			}
			peak = ms.HeapInuse
			f, err := os.Create(path + ".tmp")
			if err != nil {
				continue
			}
			if pprof.Lookup("heap").WriteTo(f, 0) == nil && f.Close() == nil {
				_ = os.Rename(path+".tmp", path)
			}
		}
	}()
}
