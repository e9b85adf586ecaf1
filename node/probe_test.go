package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

func TestProbe(t *testing.T) {
	dir := t.TempDir()
	start := time.Now()
	caps, err := Probe(context.Background(), dir, map[string]string{"zone": "shelf-2"}, "v-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("probe took %v: %+v", time.Since(start), caps)

	if caps.Arch != runtime.GOARCH || caps.OS != runtime.GOOS || caps.Cores != runtime.NumCPU() {
		t.Errorf("arch/os/cores %s/%s/%d, want %s/%s/%d", caps.Arch, caps.OS, caps.Cores, runtime.GOARCH, runtime.GOOS, runtime.NumCPU())
	}
	if runtime.GOARCH != "arm" && caps.GOARM != "" {
		t.Errorf("GOARM %q on %s", caps.GOARM, runtime.GOARCH)
	}
	if caps.Version != "v-test" || caps.Labels["zone"] != "shelf-2" {
		t.Errorf("version %q, labels %v", caps.Version, caps.Labels)
	}
	// A Pi Zero manages a few thousand iterations per ms; a server far more.
	if caps.CPUScore < 100 {
		t.Errorf("CPU score %d is implausibly low", caps.CPUScore)
	}
	if caps.FsyncP50 <= 0 || caps.FsyncP99 < caps.FsyncP50 || caps.FsyncP99 > 10*time.Second {
		t.Errorf("fsync p50 %v, p99 %v", caps.FsyncP50, caps.FsyncP99)
	}
	if caps.DiskFree == 0 {
		t.Error("no free disk reported for the temp dir")
	}
	if runtime.GOOS == "linux" {
		if caps.RAMTotal < 64<<20 || caps.RAMFree == 0 || caps.RAMFree > caps.RAMTotal {
			t.Errorf("RAM total %d, free %d", caps.RAMTotal, caps.RAMFree)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("probe left %d files in the data dir: %v", len(entries), entries[0].Name())
	}
}

func TestProbeMissingDataDir(t *testing.T) {
	_, err := Probe(context.Background(), filepath.Join(t.TempDir(), "absent"), nil, "v")
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("probe of a missing data dir: %v", err)
	}
}

func TestProbeCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	if _, err := Probe(ctx, dir, nil, "v"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled probe: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("cancelled probe left %d files", len(entries))
	}
}

func TestProbeHelpers(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	var lat []time.Duration
	for i := 1; i <= 20; i++ {
		lat = append(lat, ms(i))
	}
	if p50, p99 := percentile(lat, 50), percentile(lat, 99); p50 != ms(10) || p99 != ms(20) {
		t.Errorf("p50 %v, p99 %v of 1..20ms", p50, p99)
	}
	if percentile(nil, 50) != 0 {
		t.Error("percentile of nothing")
	}

	path := filepath.Join(t.TempDir(), "meminfo")
	const meminfo = "MemTotal:         524288 kB\nMemFree:           10240 kB\nMemAvailable:     262144 kB\nBuffers: x kB\n"
	if err := os.WriteFile(path, []byte(meminfo), 0o644); err != nil {
		t.Fatal(err)
	}
	if total, avail := memInfo(path); total != 512<<20 || avail != 256<<20 {
		t.Errorf("meminfo: total %d, available %d", total, avail)
	}
	if total, avail := memInfo(filepath.Join(t.TempDir(), "none")); total != 0 || avail != 0 {
		t.Error("a missing meminfo must give zeros")
	}
}
